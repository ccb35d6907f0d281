"""Experiment drivers: the Enhancement protocol, resumable, one record per result.

``run_enhancement`` evaluates methods on one dataset: for every core question
and seed it draws a training sample of ``n`` respondents, builds the truth
(``full`` or ``heldout``), fits each method and stores its per-subgroup errors
and summary under the key (study, dataset, question, seed, method) in a
:class:`dsalib.results.ResultStore`.  A key already in the store is skipped,
so an interrupted run resumes where it stopped.  The noise floor is stored as
the method ``floor``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import baselines, metrics, methods, surveys
from .errors import ParameterError
from .results import ResultStore, RunKey


@dataclass
class EnhancementConfig:
    dataset: str = "ess9"
    questions: Sequence[str] | None = None
    background: Sequence[str] | None = None
    n: int = 500
    seeds: Sequence[int] = (0, 1, 2, 3, 4)
    mode: str = "full"
    methods: Sequence[str] = ("TS", "MNL", "POLR", "EB-MNL", "Direct", "PE", "AAE", "TKFT", "DSA", "EB-DSA")
    model: str = "smollm2-135m"
    min_eval_size: int = 10
    phase1: dict = field(default_factory=dict)
    phase2: dict = field(default_factory=dict)
    strategy: str = "last_layer"
    data_dir: str | None = None
    source: str = "auto"
    weighted_truth: bool = False

    def check(self) -> None:
        if self.mode not in surveys.TRUTH_MODES:
            raise ParameterError(f"mode must be one of {surveys.TRUTH_MODES}, got {self.mode!r}")
        unknown = [m for m in self.methods if m not in methods.ALL]
        if unknown:
            raise ParameterError(f"unknown method(s) {unknown}; choose from {', '.join(methods.ALL)}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ParameterError(f"n must be a positive integer, got {self.n!r}")
        if not self.seeds:
            raise ParameterError("seeds must list at least one seed")


def _order_methods(names: Sequence[str]) -> list[str]:
    """EB-X after X, so the shrinkage reuses the fitted X."""
    names = list(dict.fromkeys(names))
    return sorted(names, key=lambda m: (m.startswith("EB-") and m.removeprefix("EB-") in names, names.index(m)))


def run_enhancement(cfg: EnhancementConfig, store_dir: str | Path, lm=None, progress=print) -> pd.DataFrame:
    """Run (or resume) the Enhancement study; returns the store's tidy table."""
    cfg.check()
    survey = surveys.load_survey(cfg.dataset, data_dir=cfg.data_dir, source=cfg.source)
    questions = surveys.iter_questions(survey, cfg.questions)
    attrs = survey.check_background(cfg.background)
    store_config = {k: v for k, v in asdict(cfg).items() if k not in ("seeds", "methods", "questions", "data_dir")}
    store_config["source_name"] = survey.source_name
    store = ResultStore(store_dir, config=store_config)
    need_lm = any(methods.needs_model(m) for m in cfg.methods)
    order = _order_methods(cfg.methods)
    for q in questions:
        surveys.check_levels_populated(survey, q, attrs)
        for seed in cfg.seeds:
            keys = [RunKey("enhancement", cfg.dataset, q, int(seed), m) for m in order + ["floor"]]
            if not store.pending(keys):
                continue
            split = surveys.enhancement_split(survey, q, cfg.n, int(seed), cfg.mode, attrs, cfg.weighted_truth)
            context = {k: v for k, v in split.describe().items() if k not in ("dataset", "question", "seed")}
            context.update(source=survey.source_name, source_respondents=survey.n_respondents)
            floor_key = keys[-1]
            if not store.has(floor_key):
                per = baselines.noise_floor(split.truth, seed=int(seed), min_size=cfg.min_eval_size)
                kept = split.truth.n >= cfg.min_eval_size
                per = with_distributions(per, split.truth.dist[kept], "truth")
                train_counts, train_n = split.train.lookup(split.truth.keys[kept])
                per.insert(2, "train_n", train_n)
                store.save(floor_key, {**context, **metrics.summarize(per), "seconds": 0.0}, per)
            if need_lm and lm is None:
                from .llm_methods import LanguageModel

                lm = LanguageModel.load(cfg.model)
            fitted: dict = {}
            for name, key in zip(order, keys):
                if store.has(key):
                    continue
                t0 = time.perf_counter()
                prior = fitted.get(name.removeprefix("EB-")) if name.startswith("EB-") else None
                method = methods.make_method(name, lm=lm, survey=survey, prior=prior, phase1=cfg.phase1,
                                             phase2=cfg.phase2, strategy=cfg.strategy, seed=int(seed))
                method.fit(split.train)
                pred = method.predict(split.truth.keys)
                per = metrics.evaluate(pred, split.truth, cfg.min_eval_size)
                per = with_distributions(per, pred[split.truth.n >= cfg.min_eval_size], "pred")
                fitted[name] = method
                record = {**context, **metrics.summarize(per), "seconds": time.perf_counter() - t0}
                if methods.needs_model(name):
                    record["model"] = cfg.model
                    record["option_rule"] = lm.describe(split.truth.n_options)
                report = getattr(method, "report", None)
                if report:
                    record["report"] = report
                if hasattr(method, "alpha_"):
                    record["eb_alpha"] = method.alpha_
                store.save(key, record, per)
                if progress:
                    progress(f"{cfg.dataset} {q} seed={seed} {name}: jsd={record['jsd_mean']:.4f} "
                             f"wd_scaled={record['wd_scaled_mean']:.4f} ({record['seconds']:.1f}s)")
    return store.load_all()


def with_distributions(per: pd.DataFrame, dist: np.ndarray, prefix: str) -> pd.DataFrame:
    """Add one column per option (``<prefix>_0`` ...) holding each subgroup's distribution."""
    per = per.copy()
    for i in range(dist.shape[1]):
        per[f"{prefix}_{i}"] = dist[:, i]
    return per


def summary_table(results: pd.DataFrame, metric_cols=("jsd_mean", "wd_mean", "wd_scaled_mean")) -> pd.DataFrame:
    """Mean over questions and seeds, one row per method (floor last)."""
    table = results.groupby("method")[list(metric_cols)].mean()
    order = [m for m in methods.ALL if m in table.index] + [m for m in table.index if m not in methods.ALL]
    return table.loc[order]


def load_per_subgroup(store_dir: str | Path) -> pd.DataFrame:
    """Every stored per-subgroup table of a run, stacked with its key fields."""
    return ResultStore(store_dir).load_all_per_subgroup()
