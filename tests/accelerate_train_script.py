"""Helper for tests/test_accelerate.py: train the tiny model with train_loop.

Run under ``accelerate launch --multi_gpu --num_processes 2`` (on a machine
without GPUs this starts 2 CPU processes that talk over gloo), under
``accelerate launch --use_fsdp --fsdp_version 2 --num_processes 2`` with a
strategy of ``lora`` or ``full`` (the model is sharded over the processes), or
as a plain script; every process writes ``<out>/rank<r>.pt`` with its final
trainable parameters (whole, on every process), the losses and the number of
parameter elements it holds.

    python tests/accelerate_train_script.py OUT [STRATEGY]

13 prompts in batches of 6 leave a last batch of 1 (one process idle under
2 processes); predicting the 13 prompts with ``predict_rows`` in batches of 3
gives the processes 7 and 6 rows (3 and 2 forward passes), and predicting one
prompt leaves one process without a row: cases that FSDP's collective passes
must keep in step.
"""

import sys
from pathlib import Path

import torch

from dsalib.engine import OptionModel, predict_rows, train_loop
from dsalib.lm import OptionRule, build_tiny_model

N_PROMPTS, BATCH = 13, 6


def prompts():
    return [f"Respondent {i}: age {20 + 5 * i}. " * (1 + i % 3) + "Question: Agree?\nAnswer:" for i in range(N_PROMPTS)]


def run(out_dir: Path, strategy: str = "last_layer") -> dict:
    from accelerate import PartialState

    targets = torch.softmax(2 * torch.randn(N_PROMPTS, 5, generator=torch.Generator().manual_seed(1)), -1)

    def loss_fn(om, items):  # additive over items: sum of KL / batch size
        idx = torch.tensor(items)
        t = targets[idx]
        return (t * (t.log() - om.log_probs(idx))).sum() / BATCH

    def batches(epoch):
        order = torch.randperm(N_PROMPTS, generator=torch.Generator().manual_seed(epoch)).tolist()
        return [order[s : s + BATCH] for s in range(0, N_PROMPTS, BATCH)]

    model, tok = build_tiny_model(seed=0)
    om = OptionModel(model, tok, OptionRule.letters(5), strategy=strategy, batch_size=3).prepare(prompts())
    lr = 1e-2 if strategy == "last_layer" else 1e-3
    res = train_loop(om, batches, loss_fn, epochs=4, lr=lr, seed=0, progress=False, max_grad_norm=1.0)
    state = PartialState()

    def whole(t):  # an FSDP shard gathered (collective), else the tensor
        return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu()

    out = {
        "rank": state.process_index,
        "world": state.num_processes,
        "fsdp": om.fsdp,
        "result": res.to_dict(),
        "params": {k: whole(v) for k, v in sorted(om.state_dict().items())},
        "local_elements": sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in om.model.parameters()),
        "elements": sum(p.numel() for p in om.model.parameters()),
        "probs": om.predict().cpu(),
        # each process predicts its share (7 and 6 rows: 3 and 2 batches of 3), and one row for 2 processes
        "shared_probs": predict_rows(om, list(range(N_PROMPTS))).cpu(),
        "one_row": predict_rows(om, [4]).cpu(),
    }
    if strategy == "full":  # a bf16 model: fp32 master weights, cast after sharding, autocast in bf16
        model, tok = build_tiny_model(seed=0)
        half = OptionModel(model.to(torch.bfloat16), tok, OptionRule.letters(5), strategy="full",
                           batch_size=3).prepare(prompts())
        before = half.predict().cpu()
        train_loop(half, batches, loss_fn, epochs=1, lr=lr, seed=0, progress=False, max_grad_norm=1.0)
        out["bf16"] = {
            "trainable_dtypes": sorted({str(p.dtype) for p in half.parameters_to_train()}),
            "local_elements": sum((p.to_local() if hasattr(p, "to_local") else p).numel()
                                  for p in half.model.parameters()),
            "before": before,
            "probs": half.predict().cpu(),
        }
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(out, out_dir / f"rank{state.process_index}.pt")
    return out


if __name__ == "__main__":
    run(Path(sys.argv[1]), *sys.argv[2:3])
