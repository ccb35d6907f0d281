"""Benchmark: the cached last-layer engine against the plain path.

Both train the same parameters (last block, final norm, option rows of the
head) of SmolLM2-135M for the same steps on the same batch of 16 survey
prompts (~150 tokens, 11 options A-K, ending in "Answer:"):

- plain:  full forward through all blocks every step (``cache=False``)
- cached: frozen prefix run once in ``prepare``; each step runs the last block
          at the answer position only (``cache=True``)

Each mode runs in its own process so that peak memory (max RSS) is its own.
Prints seconds per step, the one-time prefix cost, peak memory, the speed
ratio and the largest difference between the two modes' predictions before
and after training.

    python benchmarks/bench_engine.py            # SmolLM2-135M, 5 steps
    python benchmarks/bench_engine.py --model tiny --steps 2   # smoke run
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "smollm2-135m"
STEPS = 5
LR = 5e-5
WEIGHT_DECAY = 0.01
SEED = 0

GENDERS = ["Male", "Female"]
AGES = ["Under 30", "30-44", "45-59", "60 or older"]
EDUCATION = ["11 years or fewer", "12-15 years", "16 years or more"]
REGIONS = ["London, South East or East of England", "South West or Midlands", "North of England",
           "Scotland, Wales or Northern Ireland"]
OPTIONS = ["0 (Bad for the economy)"] + [str(i) for i in range(1, 10)] + ["10 (Good for the economy)"]


def survey_prompts(n: int = 16) -> list[str]:
    """Plausible ESS-style prompts: background answers, then an 11-option question."""
    prompts = []
    for i in range(n):
        lines = [
            "Below is a respondent of the European Social Survey in the United Kingdom.",
            f"Q: What is your gender? A: {GENDERS[i % 2]}",
            f"Q: How old are you? A: {AGES[(i // 2) % 4]}",
            f"Q: How many years of full-time education have you completed? A: {EDUCATION[(i // 3) % 3]}",
            f"Q: In which region do you live? A: {REGIONS[(i // 5) % 4]}",
            "Question: Would you say it is generally bad or good for the United Kingdom's economy "
            "that people come to live here from other countries?",
        ]
        lines += [f"{chr(65 + k)}. {text}" for k, text in enumerate(OPTIONS)]
        lines += ["Answer with the letter of one option (A-K).", "Answer:"]
        prompts.append("\n".join(lines))
    return prompts


def run_mode(mode: str, model_name: str, steps: int, out: Path, threads: int | None) -> None:
    """Train in one mode and write timings and predictions to ``out`` (torch file)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from dsalib.engine import OptionModel, train_loop
    from dsalib.lm import OptionRule, load_model

    torch.manual_seed(SEED)
    model, tok = load_model(model_name, device="cpu")
    rule = OptionRule.letters(11)
    prompts = survey_prompts()
    n_tokens = [len(tok(p)["input_ids"]) for p in prompts]
    t0 = time.perf_counter()
    om = OptionModel(model, tok, rule, "last_layer", cache=(mode == "cached")).prepare(prompts)
    prepare_s = time.perf_counter() - t0
    before = om.predict()
    targets = torch.softmax(2 * torch.randn(len(prompts), 11, generator=torch.Generator().manual_seed(SEED)), -1)

    def loss_fn(m, items):
        idx = torch.tensor(items)
        t = targets[idx]
        return (t * (t.log() - m.log_probs(idx))).sum() / len(prompts)

    step_times = []

    def timed_batches(epoch):  # one step per "epoch"; record when each step starts
        step_times.append(time.perf_counter())
        return [list(range(len(prompts)))]

    res = train_loop(om, timed_batches, loss_fn, epochs=steps, lr=LR, weight_decay=WEIGHT_DECAY, seed=SEED,
                     progress=False)
    step_times.append(step_times[0] + res.seconds)
    per_step = [b - a for a, b in zip(step_times, step_times[1:])]
    cache_mb = om.prefix_cache.bytes / 2**20 if om.cached else 0.0  # hidden states only (rotary recomputed)
    torch.save({
        "mode": mode, "prepare_s": prepare_s, "step_s": per_step, "loss": res.step_loss,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cache_mb": cache_mb, "before": before, "after": om.predict(),
        "tokens_min": min(n_tokens), "tokens_max": max(n_tokens), "threads": torch.get_num_threads(),
    }, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--mode", choices=["plain", "cached"], help="internal: run one mode in this process")
    ap.add_argument("--out", type=Path, help="internal: result file of --mode")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args()
    if args.mode:
        run_mode(args.mode, args.model, args.steps, args.out, args.threads)
        return

    import torch

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("plain", "cached"):
            out = Path(tmp) / f"{mode}.pt"
            subprocess.run([sys.executable, __file__, "--mode", mode, "--model", args.model,
                            "--steps", str(args.steps), "--out", str(out)]
                           + (["--threads", str(args.threads)] if args.threads else []), check=True)
            results[mode] = torch.load(out)
    plain, cached = results["plain"], results["cached"]
    # the first step carries one-time costs (optimizer state, allocator warm-up): report the rest
    # and the median, because a shared machine's load comes and goes
    steady = {m: sorted(r["step_s"][1:] or r["step_s"]) for m, r in results.items()}
    mean = {m: v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2 for m, v in steady.items()}
    summary = {
        "model": args.model, "steps": args.steps, "prompts": 16,
        "prompt_tokens": [plain["tokens_min"], plain["tokens_max"]], "torch_threads": plain["threads"],
        "plain_s_per_step": mean["plain"], "cached_s_per_step": mean["cached"],
        "plain_step_s": plain["step_s"], "cached_step_s": cached["step_s"],
        "speedup": mean["plain"] / mean["cached"],
        "plain_first_step_s": plain["step_s"][0], "cached_first_step_s": cached["step_s"][0],
        "cached_prepare_s": cached["prepare_s"], "cache_mb": cached["cache_mb"],
        "plain_peak_rss_mb": plain["peak_rss_mb"], "cached_peak_rss_mb": cached["peak_rss_mb"],
        "max_abs_diff_before": float((plain["before"] - cached["before"]).abs().max()),
        "max_abs_diff_after": float((plain["after"] - cached["after"]).abs().max()),
        "prediction_change_from_training": float((cached["after"] - cached["before"]).abs().max()),
        "loss_plain": plain["loss"], "loss_cached": cached["loss"],
    }
    print(f"model {args.model}, {args.steps} steps, 16 prompts of {summary['prompt_tokens'][0]}-"
          f"{summary['prompt_tokens'][1]} tokens, {plain['threads']} torch threads")
    print(f"{'mode':8} {'s/step (median)':>15} {'first step s':>13} {'prepare s':>10} {'peak RSS MB':>12}")
    for m, r in results.items():
        print(f"{m:8} {mean[m]:15.3f} {r['step_s'][0]:13.3f} {r['prepare_s']:10.2f} {r['peak_rss_mb']:12.0f}")
    print(f"speed-up per step (plain / cached): {summary['speedup']:.1f}x")
    print(f"cached last-block inputs: {summary['cache_mb']:.1f} MB")
    print(f"max |plain - cached| option probability: before training {summary['max_abs_diff_before']:.2e}, "
          f"after {summary['max_abs_diff_after']:.2e} (training moved predictions by up to "
          f"{summary['prediction_change_from_training']:.2e})")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
