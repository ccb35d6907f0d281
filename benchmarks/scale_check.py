"""Scale check: is the engine correct and fast enough for the paper's grid?  Prints ONE JSON line.

    python benchmarks/scale_check.py --device cpu                        # tiny models, < 3 minutes
    python benchmarks/scale_check.py --device cuda                       # Qwen3-4B config, random weights
    python benchmarks/scale_check.py --device cpu --arch qwen3-4b --layers 2 --prompts 4 --tokens 64 --steps 1  # smoke

``--device cpu`` measures, on tiny models built from a config (no download):

- ``bf16_trainable_changed_fraction``: a bf16 model, the ``last_layer``
  strategy, 6 AdamW steps at lr 5e-5 (weight decay 0.01): the share of trainable
  elements that changed in at least one step.  1.0 means no update was lost to
  rounding (bf16 parameters lose most of them; fp32 trainable parameters none).
  ``bf16_vs_fp32_max_abs_diff``: the bf16 model's option probabilities after
  those steps against an fp32 run of the same weights.
- ``offload_max_abs_diff``: a model whose embedding and first block are
  offloaded to disk (accelerate, an offload folder) against the same model
  undispatched: the largest difference in option probability, before and after
  two epochs of training.
- ``prefix_cache_peak_bytes`` / ``prefix_cache_budget_bytes``: the in-memory
  prefix cache's peak against its budget (a third of the prompts' working set,
  ``prefix_cache_working_set_bytes``) over prepare, two training epochs and a
  prediction pass; ``prefix_cache_max_abs_diff`` against an unbounded cache.
- ``accelerate_2proc_max_abs_diff`` and ``duplicate_fits``: from
  ``benchmarks/accelerate_check.py::measure()`` when that file exists (else the
  keys are left out and a note goes to stderr).
- ``fsdp_2proc_max_abs_diff``, ``fsdp_duplicate_fits`` and ``fsdp_processes``:
  the same check with ``strategy="lora"`` and the model sharded by FSDP2 over
  the 2 processes (``measure(strategy="lora", fsdp=True)``; ``--skip-fsdp``
  leaves it out, about 90 s).

``--arch qwen3-4b`` (default on ``--device cuda``) builds a model with that
configuration and random weights (``--layers`` overrides the depth, for a CPU
smoke) and measures the frozen-prefix throughput (tokens/s), the cached and
plain last-layer step times (batch 16, forward + backward + AdamW) and their
ratio, a cached prediction batch, and the peak memory; then projects the
paper's Enhancement grid from those measurements (:func:`project_grid`; its
assumptions are printed with it).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LR, WEIGHT_DECAY, BATCH = 5e-5, 0.01, 16

#: Published configurations (Qwen3 model cards' config.json); built with random weights, never downloaded.
ARCHS = {
    "qwen3-4b": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                     intermediate_size=9728, vocab_size=151936, head_dim=128, rope_theta=1_000_000.0,
                     tie_word_embeddings=True, max_position_embeddings=40960, rms_norm_eps=1e-6),
    "qwen3-32b": dict(hidden_size=5120, num_hidden_layers=64, num_attention_heads=64, num_key_value_heads=8,
                      intermediate_size=25600, vocab_size=151936, head_dim=128, rope_theta=1_000_000.0,
                      tie_word_embeddings=False, max_position_embeddings=40960, rms_norm_eps=1e-6),
}

#: The paper's Enhancement grid, as assumptions (DESIGN.md §10; CGSS and CFPS sizes are rough guesses).
#: prompts: subgroup prompts per question; n: training respondents; train_subgroups: subgroups in the
#: training sample (ESS11 at n = 4,000: about 2,600; the others scaled by the same share, capped by prompts).
GRID = {
    "datasets": {
        "ESS11": {"prompts": 6200, "n": 4000, "train_subgroups": 2600},
        "ESS9": {"prompts": 5200, "n": 4000, "train_subgroups": 2600},
        "WVS7": {"prompts": 4100, "n": 4000, "train_subgroups": 2600},
        "CGSS": {"prompts": 2000, "n": 2000, "train_subgroups": 1300},
        "CFPS": {"prompts": 1000, "n": 1000, "train_subgroups": 650},
    },
    "questions": 20, "seeds": 5, "tokens_per_prompt": 250,
    "prompt_templates": 2,  # default and persona (PE): each has its own frozen-prefix pass
    "predict_passes": 6,  # Direct, PE, AAE, TKFT, DSA, EB: one pass over all prompts per (question, seed)
    "phase2_steps_per_phase1_step": 1.0,  # DSA's Phase 2 steps relative to Phase 1's (pairs ~ subgroups)
    "batch": BATCH, "paper_epochs": 1, "selection_epochs": 10,  # epoch selection: validation pass per epoch
    "validation_share": 0.2,  # share of training subgroups held out to choose the epoch
}


# --------------------------------------------------------------------------- CPU correctness checks


def _prompts(n: int) -> list[str]:
    return [f"Respondent {i}: age {20 + 5 * i}, region {'NSEW'[i % 4]}. " * (1 + i % 4)
            + "Question: How much do you agree?\nAnswer:" for i in range(n)]


def _loss_and_batches(n: int, k: int = 5):
    import torch

    targets = torch.softmax(2 * torch.randn(n, k, generator=torch.Generator().manual_seed(1)), -1)

    def kl(om, items):
        idx = torch.tensor(items)
        t = targets[idx]
        return (t * (t.log() - om.log_probs(idx))).sum() / 4

    return kl, [list(range(s, min(s + 4, n))) for s in range(0, n, 4)]


def measure_bf16(n_prompts: int = 12, steps: int = 6) -> dict:
    """bf16 model, last_layer: share of trainable elements that changed in at least one of ``steps`` AdamW steps."""
    import torch

    from dsalib.engine import OptionModel
    from dsalib.lm import OptionRule, build_tiny_model

    rule = OptionRule.letters(5)
    kl, batches = _loss_and_batches(n_prompts)
    model32, tok = build_tiny_model(seed=0)
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    runs = {}
    for name, model in (("bf16", model16), ("fp32", model32)):
        om = OptionModel(model, tok, rule).prepare(_prompts(n_prompts))
        params = om.parameters_to_train()
        opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
        ever = [torch.zeros_like(p, dtype=torch.bool) for p in params]
        for step in range(steps):
            before = [p.detach().clone() for p in params]
            opt.zero_grad()
            kl(om, batches[step % len(batches)]).backward()
            opt.step()
            for e, p, b in zip(ever, params, before):
                e |= p.detach() != b
        runs[name] = (om, sum(int(e.sum()) for e in ever) / sum(e.numel() for e in ever))
    return {
        "bf16_trainable_changed_fraction": runs["bf16"][1],
        "bf16_trainable_dtypes": sorted({str(p.dtype).replace("torch.", "") for p in runs["bf16"][0].parameters_to_train()}),
        "bf16_vs_fp32_max_abs_diff": float((runs["bf16"][0].predict() - runs["fp32"][0].predict()).abs().max()),
    }


def measure_offload(n_prompts: int = 12, epochs: int = 2) -> dict:
    """Embedding and first block offloaded to disk vs the undispatched model: predictions before and after training."""
    from dsalib.engine import OptionModel, train_loop
    from dsalib.lm import OptionRule, build_tiny_model, dispatch

    rule = OptionRule.letters(5)
    kl, batches = _loss_and_batches(n_prompts)
    model, tok = build_tiny_model(seed=0, tie_word_embeddings=False)
    plain = copy.deepcopy(model)
    device_map = {"model.embed_tokens": "disk", "model.layers.0": "disk", "model.layers.1": "cpu",
                  "model.layers.2": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    with tempfile.TemporaryDirectory() as folder:
        sharded = dispatch(model, device_map, offload_folder=folder)
        a = OptionModel(sharded, tok, rule).prepare(_prompts(n_prompts))
        b = OptionModel(plain, tok, rule).prepare(_prompts(n_prompts))
        before = float((a.predict() - b.predict()).abs().max())
        train_loop(a, batches, kl, epochs=epochs, lr=1e-3, progress=False)
        train_loop(b, batches, kl, epochs=epochs, lr=1e-3, progress=False)
        after = float((a.predict() - b.predict()).abs().max())
    return {"offload_max_abs_diff": max(before, after)}


def measure_prefix_cache(n_prompts: int = 12, epochs: int = 2) -> dict:
    """A budget of a third of the working set: peak bytes, recomputations, and agreement with an unbounded cache."""
    import warnings

    from dsalib.engine import OptionModel, train_loop
    from dsalib.lm import OptionRule, build_tiny_model

    rule = OptionRule.letters(5)
    kl, batches = _loss_and_batches(n_prompts)
    model, tok = build_tiny_model(seed=0)
    free = OptionModel(copy.deepcopy(model), tok, rule, prefix_cache_bytes=None).prepare(_prompts(n_prompts))
    working_set = free.prefix_cache.bytes
    budget = working_set // 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the budget warning is expected here
        small = OptionModel(copy.deepcopy(model), tok, rule, prefix_cache_bytes=budget).prepare(_prompts(n_prompts))
    diffs = [float((small.predict() - free.predict()).abs().max())]
    train_loop(small, batches, kl, epochs=epochs, lr=1e-3, progress=False)
    train_loop(free, batches, kl, epochs=epochs, lr=1e-3, progress=False)
    diffs.append(float((small.predict() - free.predict()).abs().max()))
    return {
        "prefix_cache_peak_bytes": small.prefix_cache.peak_bytes,
        "prefix_cache_budget_bytes": budget,
        "prefix_cache_working_set_bytes": working_set,
        "prefix_cache_recomputed_prompts": small.prefix_computed - n_prompts,
        "prefix_cache_max_abs_diff": max(diffs),
    }


def accelerate_measurements(fsdp: bool = True) -> dict:
    """``benchmarks/accelerate_check.py::measure()`` (and its FSDP2 lora run) when that file exists; {} (and a note)
    otherwise."""
    path = Path(__file__).with_name("accelerate_check.py")
    if not path.is_file():
        print(f"note: {path.name} not found; accelerate_2proc_max_abs_diff and duplicate_fits left out",
              file=sys.stderr)
        return {}
    spec = importlib.util.spec_from_file_location("accelerate_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    got = module.measure()
    out = {k: got[k] for k in ("accelerate_2proc_max_abs_diff", "duplicate_fits") if k in got}
    if fsdp:
        got = module.measure(strategy="lora", fsdp=True)
        out.update(fsdp_2proc_max_abs_diff=got["accelerate_2proc_max_abs_diff"],
                   fsdp_duplicate_fits=got["duplicate_fits"], fsdp_processes=got["fsdp_processes"])
    return out


# --------------------------------------------------------------------------- architecture timing


def arch_config(arch: str = "qwen3-4b", layers: int | None = None, vocab_size: int | None = None):
    """A transformers config with a published architecture's shape (``layers``/``vocab_size`` override)."""
    from transformers import Qwen3Config

    if arch not in ARCHS:
        raise SystemExit(f"unknown --arch {arch!r}; choose one of {sorted(ARCHS)}")
    fields = dict(ARCHS[arch])
    if layers is not None:
        fields["num_hidden_layers"] = layers
    if vocab_size is not None:
        fields["vocab_size"] = vocab_size
    return Qwen3Config(**fields, initializer_range=0.02, attn_implementation="sdpa",
                       bos_token_id=0, eos_token_id=0, pad_token_id=0)


def survey_prompts(tokenizer, n: int, tokens: int = 250) -> list[str]:
    """``n`` distinct ESS-style prompts of about ``tokens`` tokens under ``tokenizer``, ending in "Answer:"."""
    head = ("Below is a respondent of the European Social Survey. Q: What is your gender? A: {g}. "
            "Q: How old are you? A: {a}. Q: Years of education? A: {e}. Q: Region? A: {r}. ")
    tail = ("Question: Would you say it is generally bad or good for the economy that people come to live here "
            "from other countries? Options A to K. Answer:")
    out = []
    for i in range(n):
        text = head.format(g="FM"[i % 2], a=18 + i % 70, e=i % 23, r=i)
        filler = " the"
        while len(tokenizer(text + tail)["input_ids"]) < tokens:
            text += filler
        out.append(text + tail)
    return out


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_steps(om, batches, kl, steps: int) -> float:
    """Median seconds of an AdamW step (forward, backward, update) after one warm-up step."""
    import torch

    params = om.parameters_to_train()
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    times = []
    for s in range(steps + 1):
        _sync(om.device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        kl(om, batches[s % len(batches)]).backward()
        opt.step()
        _sync(om.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def measure_arch(arch: str, device: str, layers: int | None, n_prompts: int, steps: int,
                 prefix_batch_size: int, tokens: int = 250) -> dict:
    """Build ``arch`` with random weights on ``device`` and time the engine's pieces."""
    import torch
    from transformers import AutoModelForCausalLM

    from dsalib.engine import OptionModel
    from dsalib.lm import OptionRule, default_dtype, tiny_tokenizer

    dev = torch.device(device)
    dtype = default_dtype(dev)  # bf16 on CUDA; fp32 on CPU (CPU bf16 matmuls are slow)
    config = arch_config(arch, layers)
    torch.manual_seed(0)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    build_s = time.perf_counter() - t0
    print(f"built {arch} ({config.num_hidden_layers} layers) on {dev} in {build_s:.1f} s", file=sys.stderr, flush=True)
    tok = tiny_tokenizer()
    rule = OptionRule.letters(11)
    prompts = survey_prompts(tok, n_prompts, tokens)
    ids = [len(tok(p)["input_ids"]) for p in prompts]
    n = len(prompts)
    targets = torch.softmax(torch.randn(n, 11, generator=torch.Generator().manual_seed(1)), -1).to(dev)
    batch = min(BATCH, n)
    batches = [list(range(s, s + batch)) for s in range(0, n - batch + 1, batch)] or [list(range(n))]

    def kl(om, items):
        idx = torch.tensor(items)
        t = targets[idx]
        return (t * (t.log() - om.log_probs(idx))).sum() / len(items)

    cached = OptionModel(model, tok, rule, batch_size=batch, prefix_batch_size=prefix_batch_size,
                         prefix_cache_bytes=None)
    _sync(dev)
    cached.prepare(prompts[: min(prefix_batch_size, n)])  # warm-up (kernels, allocator)
    cached.prefix_seconds, cached.prefix_computed = 0.0, 0
    cached.prefix_cache.clear()
    cached.prepare(prompts)
    _sync(dev)
    prefix_tokens_per_s = sum(ids) / cached.prefix_seconds
    print(f"prefix: {prefix_tokens_per_s:.0f} tokens/s", file=sys.stderr, flush=True)
    cached_step = _timed_steps(cached, batches, kl, steps)
    t0 = time.perf_counter()
    cached.predict()
    _sync(dev)
    predict_batch = (time.perf_counter() - t0) / math.ceil(n / batch)
    plain = OptionModel(model, tok, rule, cache=False, batch_size=batch).prepare(prompts)
    plain_step = _timed_steps(plain, batches, kl, max(1, steps // 2))
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "arch": arch, "layers": config.num_hidden_layers, "dtype": str(dtype).replace("torch.", ""),
        "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        "parameters": sum(p.numel() for p in model.parameters()), "build_seconds": build_s,
        "prompts": n, "mean_prompt_tokens": sum(ids) / n, "prefix_batch_size": prefix_batch_size,
        "prefix_tokens_per_s": prefix_tokens_per_s,
        "cached_step_s": cached_step, "plain_step_s": plain_step, "plain_over_cached": plain_step / cached_step,
        "cached_predict_batch_s": predict_batch,
        "peak_memory_bytes": int(peak), "peak_memory_kind": "cuda max_memory_allocated" if dev.type == "cuda" else "max RSS",
        "prefix_cache_bytes_per_prompt": cached.prefix_cache.bytes / n,
    }


def project_grid(m: dict, grid: dict = GRID) -> dict:
    """Hours for the paper's Enhancement grid from measured rates ``m`` (keys of :func:`measure_arch`).

    Cached engine: each question's prompts pass the frozen prefix once per
    prompt template (shared by every seed and method); each (question, seed)
    runs Phase 1 (``epochs`` over the training subgroups in batches), DSA's
    Phase 2, ``predict_passes`` prediction passes, and with epoch selection one
    validation pass per epoch.  Plain path: every step and every prediction
    batch is a full forward (prefix tokens at the measured rate, plus the
    step), and nothing is cached.
    """
    q, seeds, b = grid["questions"], grid["seeds"], grid["batch"]
    tok = grid["tokens_per_prompt"]
    out = {"grid_assumptions": grid}
    prompts_total = sum(d["prompts"] for d in grid["datasets"].values()) * q
    prefix_s = prompts_total * grid["prompt_templates"] * tok / m["prefix_tokens_per_s"]
    per_prompt_full_s = tok / m["prefix_tokens_per_s"]  # a full forward costs the prefix's tokens again
    for label, epochs in (("paper", grid["paper_epochs"]), ("epoch_selection", grid["selection_epochs"])):
        steps = pred_batches = 0.0
        for d in grid["datasets"].values():
            train = d["train_subgroups"] * (1 - grid["validation_share"] if label == "epoch_selection" else 1)
            phase1 = epochs * math.ceil(train / b)
            steps += q * seeds * phase1 * (1 + grid["phase2_steps_per_phase1_step"])
            passes = grid["predict_passes"] + (epochs if label == "epoch_selection" else 0)
            pred_batches += q * seeds * passes * math.ceil(d["prompts"] / b)
        cached_s = prefix_s + steps * m["cached_step_s"] + pred_batches * m["cached_predict_batch_s"]
        plain_s = steps * m["plain_step_s"] + pred_batches * (b * per_prompt_full_s + m["cached_predict_batch_s"])
        out[f"projected_hours_cached_{label}"] = cached_s / 3600
        out[f"projected_hours_plain_{label}"] = plain_s / 3600
        out[f"training_steps_{label}"] = steps
    out["projected_prefix_hours"] = prefix_s / 3600
    out["grid_prompts"] = prompts_total
    return out


# --------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--arch", default=None, help=f"one of {sorted(ARCHS)} (default on cuda: qwen3-4b)")
    ap.add_argument("--layers", type=int, default=None, help="override the architecture's depth (CPU smoke)")
    ap.add_argument("--prompts", type=int, default=256, help="prompts for the architecture timing")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps (median)")
    ap.add_argument("--prefix-batch-size", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=250, help="tokens per timing prompt (the paper's are about 250)")
    ap.add_argument("--skip-accelerate", action="store_true", help="do not run accelerate_check.measure()")
    ap.add_argument("--skip-fsdp", action="store_true", help="do not run its FSDP2 (lora) variant")
    args = ap.parse_args(argv)
    import torch

    arch = args.arch or ("qwen3-4b" if args.device == "cuda" else None)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible (install a CUDA build of torch on a GPU machine)")
    start = time.perf_counter()
    result: dict = {"device": args.device}
    if arch is None:
        torch.set_num_threads(1)  # tiny models: threads only add noise on a busy machine
        result.update(measure_bf16())
        result.update(measure_offload())
        result.update(measure_prefix_cache())
        if not args.skip_accelerate:
            result.update(accelerate_measurements(fsdp=not args.skip_fsdp))
    else:
        timing = measure_arch(arch, args.device, args.layers, args.prompts, args.steps, args.prefix_batch_size,
                              args.tokens)
        result.update(timing)
        result.update(project_grid(timing))
        if args.layers is not None or args.device != "cuda":
            result["note"] = "a smoke run (fewer layers or no GPU): the projection is not the paper's setting"
    result["seconds"] = time.perf_counter() - start
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
