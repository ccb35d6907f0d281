"""Time the README's headline command and say where the time goes.

    .venv/bin/python benchmarks/headline_profile.py                    # ESS9, the reference parameter file
    .venv/bin/python benchmarks/headline_profile.py --params params/enhancement/gss2018.yaml
    .venv/bin/python benchmarks/headline_profile.py --seeds 0 --out /tmp/profile.json

It runs the Enhancement protocol of a parameter file (default
``params/enhancement/ess9.yaml``, what ``papermill notebooks/enhancement.ipynb
-p dataset ess9`` computes) **from scratch**: empty result stores and an empty
frozen-prefix cache in a temporary folder (the converted model in
``~/.cache/dsalib/models`` is reused; its one-off conversion is not counted).
The notebook itself adds the tables and figures (a few seconds) on top.

It prints one JSON object: the total wall time and the profile, in seconds,

- ``load_data``, ``load_model``: reading the survey and the model;
- ``prefix_passes``: frozen-prefix forward passes (every method's prompts;
  each distinct prompt once, then from the cache); ``prefix_prompts`` counts them.
  Nearly all of it is the one pass over every prompt before the methods run
  (``prefix_warm_seconds``, :func:`dsalib.experiments.warm_prefix`), which runs
  the openings that prompts share once (``prefix_shared_passes`` batch-1 passes);
- ``training``: Phase 1 and Phase 2 steps (``dsalib.engine.train_loop``,
  without its validation passes);
- ``validation``: the validation passes of epoch selection and of the Phase 2 guard;
- per method, its fit and scoring time (``fit_by_method``; an LLM method's
  includes the training it triggered, and any prefix pass the warm pass left);
- ``statistical``: the sum of the statistical methods' fits (TS, MNL, POLR, EB-MNL);
- ``floor_and_scoring``: the remainder (noise floors, metrics, stores), not
  counting the warm prefix pass.

Nothing is tuned on the output: the results it computes are the stored
results of the reference run (the same store key), just in a temporary store.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402


class Timer:
    """Wall time spent inside wrapped functions (outermost call only, so nested calls are not counted twice)."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self._depth = defaultdict(int)

    def wrap(self, owner, attr: str, label: str) -> None:
        fn = getattr(owner, attr)

        def wrapped(*args, **kwargs):
            self._depth[label] += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth[label] -= 1
                if self._depth[label] == 0:
                    self.seconds[label] += time.perf_counter() - t0
                    self.calls[label] += 1

        setattr(owner, attr, wrapped)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params" / "enhancement" / "ess9.yaml"),
                    help="an Enhancement parameter file (default: the ESS9 reference run)")
    ap.add_argument("--seeds", nargs="*", type=int, help="override the file's seeds (e.g. --seeds 0 for a quick look)")
    ap.add_argument("--out", help="also write the JSON object to this file")
    ap.add_argument("--store-root", help="result stores here instead of a temporary folder (must hold no store of "
                    "this run, or the time is not from scratch); e.g. cache/runs, so that make outputs reuses them")
    ap.add_argument("--prefix-cache", help="frozen-prefix cache here instead of a temporary folder (empty, as above)")
    args = ap.parse_args(argv)

    import torch

    from dsalib import config, engine, experiments, surveys, train
    from dsalib.experiments import run_enhancement
    from dsalib.llm_methods import LanguageModel
    from dsalib.methods import needs_model

    with open(args.params, encoding="utf-8") as fh:
        params = yaml.safe_load(fh) or {}
    if args.seeds:
        params["seeds"] = list(args.seeds)
    cfg = config.from_params("enhancement", params)

    timer = Timer()
    timer.wrap(engine.OptionModel, "_compute_prefix", "prefix_passes")
    timer.wrap(experiments, "warm_prefix", "prefix_warm")
    timer.wrap(train, "validation_ce", "validation")
    # train_loop's own time minus the validation passes it ran = the training steps
    timer.wrap(engine, "train_loop", "train_loop")

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dsa-profile-") as tmp:
        store_root = Path(args.store_root) if args.store_root else Path(tmp) / "runs"
        prefix_dir = Path(args.prefix_cache) if args.prefix_cache else Path(tmp) / "prefix"
        if prefix_dir.is_dir() and any(prefix_dir.iterdir()):
            sys.exit(f"error: --prefix-cache {prefix_dir} is not empty; a from-scratch time needs an empty one")
        t0 = time.perf_counter()
        survey = surveys.load_survey(cfg.dataset, data_dir=cfg.data_dir, source=cfg.source, questions=cfg.questions,
                                     background=cfg.background)
        load_data = time.perf_counter() - t0
        lm, load_model = None, 0.0
        if any(map(needs_model, cfg.methods)):
            t0 = time.perf_counter()
            lm = LanguageModel.load(cfg.model, prefix_cache_dir=str(prefix_dir.resolve()),
                                    chat_template=cfg.chat_template)
            load_model = time.perf_counter() - t0
        from dsalib.experiments import store_dir_for

        stored = [m for m in cfg.modes if (store_dir_for(cfg, m, store_root, survey) / "records").is_dir()
                  and any((store_dir_for(cfg, m, store_root, survey) / "records").iterdir())]
        if stored:
            sys.exit(f"error: {store_root} already holds results of this run ({stored}); a from-scratch time "
                     "needs them gone (or leave out --store-root)")
        results = run_enhancement(cfg, lm=lm, store_root=store_root, survey=survey, progress=None)
    total = time.perf_counter() - t_start

    firsts = results.drop_duplicates(["question", "seed", "method"])  # fit_seconds is per fit, shared by the modes
    fits = firsts.groupby("method")["fit_seconds"].sum() if "fit_seconds" in firsts else {}
    scoring = results.groupby("method")["seconds"].sum() - results.groupby("method")["fit_seconds"].sum()
    by_method = {m: round(float(fits.get(m, 0.0) + scoring.get(m, 0.0)), 1) for m in cfg.methods}
    statistical = sum(v for m, v in by_method.items() if not needs_model(m))
    prefix = timer.seconds["prefix_passes"]
    validation = timer.seconds["validation"]
    training = timer.seconds["train_loop"] - validation  # validation runs inside train_loop (and after it, for the guard)
    warm = timer.seconds["prefix_warm"]  # the one pass over every prompt before the methods run
    accounted = load_data + load_model + warm + sum(by_method.values())
    oms = [om for om, _ in lm._option_models.values()] if lm is not None else []
    prefix_prompts = sum(om.prefix_computed for om in oms)
    report = {
        "params": os.path.relpath(args.params, ROOT) if Path(args.params).resolve().is_relative_to(ROOT) else args.params,
        "dataset": survey.name, "questions": int(results.question.nunique()), "seeds": list(cfg.seeds),
        "methods": list(cfg.methods), "modes": list(cfg.modes), "n": cfg.n,
        "total_seconds": round(total, 1),
        "profile_seconds": {
            "load_data": round(load_data, 1), "load_model": round(load_model, 1),
            "prefix_passes": round(prefix, 1), "training": round(training, 1), "validation": round(validation, 1),
            "statistical": round(statistical, 1),
            "floor_and_scoring": round(total - accounted, 1),
        },
        "prefix_prompts": int(prefix_prompts),
        "prefix_warm_seconds": round(warm, 1),
        "prefix_shared_passes": int(sum(om.prefix_shared_passes for om in oms)),
        "fit_by_method": by_method,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__, "platform": platform.machine()},
    }
    line = json.dumps(report)
    print(line)
    if args.out:
        Path(args.out).write_text(line + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
