"""Helper for tests/test_accelerate.py: train the tiny model with train_loop.

Run under ``accelerate launch --multi_gpu --num_processes 2`` (on a machine
without GPUs this starts 2 CPU processes that talk over gloo) or as a plain
script; every process writes ``<out>/rank<r>.pt`` with its final trainable
parameters and the losses.
"""

import sys
from pathlib import Path

import torch

from dsalib.engine import OptionModel, train_loop
from dsalib.lm import OptionRule, build_tiny_model

N_PROMPTS, BATCH = 12, 6


def prompts():
    return [f"Respondent {i}: age {20 + 5 * i}. " * (1 + i % 3) + "Question: Agree?\nAnswer:" for i in range(N_PROMPTS)]


def run(out_dir: Path) -> dict:
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
    om = OptionModel(model, tok, OptionRule.letters(5)).prepare(prompts())
    res = train_loop(om, batches, loss_fn, epochs=4, lr=1e-2, seed=0, progress=False)
    state = PartialState()
    out = {
        "rank": state.process_index,
        "world": state.num_processes,
        "result": res.to_dict(),
        "params": {k: v.cpu() for k, v in om.state_dict().items()},
        "probs": om.predict().cpu(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(out, out_dir / f"rank{state.process_index}.pt")
    return out


if __name__ == "__main__":
    run(Path(sys.argv[1]))
