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
from .results import ResultStore, RunKey, code_version


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
    template: str = "default"

    def check(self) -> None:
        from .prompts import TEMPLATES

        if self.mode not in surveys.TRUTH_MODES:
            raise ParameterError(f"mode must be one of {surveys.TRUTH_MODES}, got {self.mode!r}")
        if self.template not in TEMPLATES:
            raise ParameterError(f"unknown prompt template {self.template!r}; choose from {', '.join(TEMPLATES)}")
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


#: Where shared stores live by default (relative to the repository root; see :func:`store_dir_for`).
DEFAULT_STORE_ROOT = "cache/runs"
#: Config fields that do not change a stored result (they select which keys run).
_NOT_IN_STORE = ("seeds", "methods", "questions", "data_dir")


def store_config(cfg: EnhancementConfig, mode: str | None = None) -> dict:
    """The settings a stored Enhancement result depends on (what a store is keyed by)."""
    conf = {k: v for k, v in asdict(cfg).items() if k not in _NOT_IN_STORE}
    conf["mode"] = mode or cfg.mode
    return conf


def store_dir_for(cfg: EnhancementConfig, mode: str | None = None, root: str | Path = DEFAULT_STORE_ROOT) -> Path:
    """The shared store of a configuration: ``root/enhancement-<dataset>-<mode>-n<n>-<hash>``.

    Every notebook that runs the Enhancement protocol with the same settings
    (dataset, n, truth mode, model, template, training configs, ...) uses the
    same folder, so results computed by one study (e.g. ``enhancement``) are
    reused by the others (``unseen_backgrounds``, ``robustness``,
    ``data_efficiency``) instead of being recomputed.  The hash covers
    :func:`store_config`; the store also records that config in ``store.json``.
    """
    import hashlib

    from .results import resolve_output_dir, to_json

    conf = store_config(cfg, mode)
    digest = hashlib.sha256(to_json(conf).encode()).hexdigest()[:10]
    return resolve_output_dir(root) / f"enhancement-{cfg.dataset}-{conf['mode']}-n{cfg.n}-{digest}"


def run_enhancement(cfg: EnhancementConfig, store_dir: str | Path | None = None, lm=None, progress=print,
                    modes: Sequence[str] | None = None, store_root: str | Path = DEFAULT_STORE_ROOT,
                    floor: bool = True) -> pd.DataFrame:
    """Run (or resume) the Enhancement study; returns the stores' tidy table (column ``truth_mode``).

    ``modes``: the ground-truth modes to evaluate (default ``[cfg.mode]``).
    The training sample of a seed is the same in every mode, so each method
    is fitted once per (question, seed) and scored against every mode's
    truth.  Each mode has its own store: ``store_dir`` (one mode only) or the
    shared :func:`store_dir_for` under ``store_root``.  ``floor=False`` leaves
    the noise floor to another job (:mod:`dsalib.grid` computes it with the
    statistical methods).
    """
    cfg.check()
    modes = list(dict.fromkeys(modes or [cfg.mode]))
    bad = [m for m in modes if m not in surveys.TRUTH_MODES]
    if bad:
        raise ParameterError(f"truth modes must be among {surveys.TRUTH_MODES}, got {bad}")
    if store_dir is not None and len(modes) > 1:
        raise ParameterError("store_dir names one store; with several truth modes give store_root instead")
    survey = surveys.load_survey(cfg.dataset, data_dir=cfg.data_dir, source=cfg.source, questions=cfg.questions,
                                 background=cfg.background)
    questions = surveys.iter_questions(survey, cfg.questions)
    attrs = survey.check_background(cfg.background)
    stores = {}
    for mode in modes:
        conf = {**store_config(cfg, mode), "source_name": survey.source_name}
        path = Path(store_dir) if store_dir is not None else store_dir_for(cfg, mode, store_root)
        stores[mode] = ResultStore(path, config=conf)
    need_lm = any(methods.needs_model(m) for m in cfg.methods)
    order = _order_methods(cfg.methods)
    commit = code_version()["commit"][:12]  # each record says which code computed it (stores outlive commits)
    for q in questions:
        surveys.check_levels_populated(survey, q, attrs)
        for seed in cfg.seeds:
            keys = [RunKey("enhancement", cfg.dataset, q, int(seed), m) for m in order + (["floor"] if floor else [])]
            if not any(stores[mode].pending(keys) for mode in modes):
                continue
            splits = {mode: surveys.enhancement_split(survey, q, cfg.n, int(seed), mode, attrs, cfg.weighted_truth)
                      for mode in modes}
            train = splits[modes[0]].train
            contexts = {}
            for mode, split in splits.items():
                context = {k: v for k, v in split.describe().items() if k not in ("dataset", "question", "seed")}
                context.update(source=survey.source_name, source_respondents=survey.n_respondents,
                               template=cfg.template, code_commit=commit)
                contexts[mode] = context
                store, floor_key = stores[mode], keys[-1]
                if floor and not store.has(floor_key):
                    per = baselines.noise_floor(split.truth, seed=int(seed), min_size=cfg.min_eval_size)
                    kept = split.truth.n >= cfg.min_eval_size
                    per = with_distributions(per, split.truth.dist[kept], "truth")
                    _, train_n = split.train.lookup(split.truth.keys[kept])
                    per.insert(2, "train_n", train_n)
                    store.save(floor_key, {**context, **metrics.summarize(per), "seconds": 0.0}, per)
            if need_lm and lm is None:
                from .llm_methods import LanguageModel

                lm = LanguageModel.load(cfg.model)
            fitted: dict = {}
            for name, key in zip(order, keys):
                todo = [mode for mode in modes if not stores[mode].has(key)]
                eb_key = RunKey("enhancement", cfg.dataset, q, int(seed), "EB-" + name)
                eb_pending = f"EB-{name}" in order and any(not stores[m].has(eb_key) for m in modes)
                if not todo and not eb_pending:
                    continue  # stored in every mode, and no pending EB-<name> needs it as its prior
                t0 = time.perf_counter()
                prior = fitted.get(name.removeprefix("EB-")) if name.startswith("EB-") else None
                method = methods.make_method(name, lm=lm, survey=survey, prior=prior, phase1=cfg.phase1,
                                             phase2=cfg.phase2, strategy=cfg.strategy, seed=int(seed),
                                             template=cfg.template)
                method.fit(train)
                fit_seconds = time.perf_counter() - t0
                fitted[name] = method
                for mode in todo:
                    # only evaluated subgroups are predicted: smaller ones would cost prompts for nothing
                    truth = splits[mode].truth.subset(splits[mode].truth.n >= cfg.min_eval_size)
                    t1 = time.perf_counter()
                    pred = method.predict(truth.keys)
                    per = metrics.evaluate(pred, truth, cfg.min_eval_size)
                    per = with_distributions(per, pred, "pred")
                    record = {**contexts[mode], **metrics.summarize(per),
                              "seconds": fit_seconds + time.perf_counter() - t1, "fit_seconds": fit_seconds}
                    if methods.needs_model(name):
                        record["model"] = cfg.model
                        record["option_rule"] = lm.describe(truth.n_options)
                    report = getattr(method, "report", None)
                    if report:
                        record["report"] = report
                    if hasattr(method, "alpha_"):
                        record["eb_alpha"] = method.alpha_
                    stores[mode].save(key, record, per)
                    if progress:
                        progress(f"{cfg.dataset} {q} seed={seed} {name} [{mode}]: jsd={record['jsd_mean']:.4f} "
                                 f"wd_scaled={record['wd_scaled_mean']:.4f} ({record['seconds']:.1f}s)")
    frames = []
    for mode in modes:
        df = stores[mode].load_all()
        if len(df):
            df["truth_mode"] = mode
        frames.append(df)
    return rows_of(cfg, pd.concat(frames, ignore_index=True), questions)


def rows_of(cfg: EnhancementConfig, df: pd.DataFrame, questions: Sequence[str] | None = None) -> pd.DataFrame:
    """The rows of a shared store's table that belong to ``cfg``: its questions, seeds and methods (and ``floor``).

    A shared store also holds what other studies computed with the same
    settings (other seeds, methods or questions); a study reports only its own.
    ``questions``: the resolved question list (default ``cfg.questions``; None keeps every question).
    """
    if df.empty:
        return df
    qs = questions if questions is not None else cfg.questions
    keep = df.seed.isin([int(s) for s in cfg.seeds]) & df.method.isin(list(cfg.methods) + ["floor"])
    if qs is not None:
        keep &= df.question.isin(list(qs))
    return df[keep].reset_index(drop=True)


def load_per_subgroup_modes(cfg: EnhancementConfig, modes: Sequence[str], store_root: str | Path = DEFAULT_STORE_ROOT
                            ) -> pd.DataFrame:
    """The per-subgroup rows of ``cfg`` (:func:`rows_of`) in its shared stores, for each truth mode (column ``truth_mode``)."""
    frames = []
    for mode in modes:
        df = ResultStore(store_dir_for(cfg, mode, store_root)).load_all_per_subgroup()
        df["truth_mode"] = mode
        frames.append(df)
    return rows_of(cfg, pd.concat(frames, ignore_index=True))


def with_distributions(per: pd.DataFrame, dist: np.ndarray, prefix: str) -> pd.DataFrame:
    """Add one column per option (``<prefix>_0`` ...) holding each subgroup's distribution."""
    per = per.copy()
    for i in range(dist.shape[1]):
        per[f"{prefix}_{i}"] = dist[:, i]
    return per


def summary_table(results: pd.DataFrame, metric_cols=("jsd_mean", "wd_mean", "wd_scaled_mean"),
                  by: Sequence[str] = ()) -> pd.DataFrame:
    """Mean over questions and seeds, one row per method (floor last); ``by`` adds grouping columns first.

    E.g. ``by=["truth_mode"]`` gives one block of rows per truth mode.
    """
    table = results.groupby(list(by) + ["method"])[list(metric_cols)].mean()
    others = sorted(set(results["method"]) - set(methods.ALL))  # e.g. floor, after the registry's methods
    rank = {m: i for i, m in enumerate(list(methods.ALL) + others)}
    return table.sort_index(key=lambda idx: idx.map(rank) if idx.name == "method" else idx)
