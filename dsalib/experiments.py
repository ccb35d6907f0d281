"""The protocol driver: fit once, score every truth, add the noise floor, store; and the Enhancement set-up.

:func:`fit_and_score` is the one loop both protocols run (Enhancement here,
Generation in :mod:`dsalib.generation`): for one training set it fits each
method once and scores it against every truth that still lacks its result,
stores one record per (truth, method) and the noise floor of each truth as
the method ``floor``.  Keys already stored are skipped, so an interrupted run
resumes where it stopped.

:func:`run_enhancement` evaluates methods on one dataset: for every core
question and seed it draws a training sample of ``n`` respondents, builds the
truth of each mode in ``cfg.modes`` (``full``, ``heldout``) and runs
:func:`fit_and_score` with one truth per mode, each in its own shared store
(:func:`store_dir_for`, keyed by :mod:`dsalib.stores`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from . import baselines, metrics, methods, surveys
from .config import MODEL_PLACEMENT_FIELDS, EnhancementConfig
from .errors import ParameterError
from .results import ResultStore, RunKey, code_version
from .stores import DEFAULT_STORE_ROOT, store_dir, store_key
from .surveys import SubgroupTable

__all__ = ["EnhancementConfig", "Truth", "Fitted", "fit_and_score", "run_enhancement", "store_dir_for",
           "store_settings", "rows_of", "load_per_subgroup_modes", "with_distributions", "summary_table"]


# --------------------------------------------------------------------------
# The one protocol loop
# --------------------------------------------------------------------------


@dataclass
class Truth:
    """One ground truth that fitted methods are scored against, and where its results go.

    ``table``: the evaluated subgroups (each with at least ``min_eval_size``
    respondents); ``key(method)``: the store key of a method's result;
    ``context``: fields every record of this truth carries; ``columns(per)``:
    adds per-subgroup columns (e.g. the training size or the population);
    ``applies(method)``: whether the method is scored on this truth.
    """

    store: ResultStore
    key: Callable[[str], object]
    table: SubgroupTable
    context: dict = field(default_factory=dict)
    label: str = ""
    columns: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    applies: Callable[[str], bool] = lambda name: True

    def pending(self, name: str) -> bool:
        return self.applies(name) and not self.store.has(self.key(name))


@dataclass
class Fitted:
    """A method fitted once on the training set: ``predict(truth)`` gives one distribution per truth subgroup."""

    predict: Callable[[Truth], np.ndarray]
    record: dict = field(default_factory=dict)  # fields added to every record (e.g. the training report)
    method: object = None  # the fitted method object (e.g. the prior of EB-<name>)


def fit_and_score(names: Sequence[str], truths: Sequence[Truth], fit: Callable[[str, dict], Fitted], seed: int,
                  min_eval_size: int, progress: Callable[[str], None] | None = print, floor: bool = True) -> int:
    """Fit each method once, score it on every truth that lacks its result, store; add each truth's noise floor.

    ``fit(name, fitted)`` fits method ``name`` (``fitted``: the methods fitted
    so far in this call, by name, e.g. the prior of ``EB-<name>``).  A method
    is fitted only when some truth still lacks its result or a later pending
    ``EB-<name>`` needs it as its prior.  Returns the number of records stored.
    ``floor=False`` leaves the noise floor to another job (:mod:`dsalib.grid`
    computes it with the statistical methods).
    """
    saved = 0
    for t in truths if floor else ():
        floor_key = t.key("floor")
        if not t.store.has(floor_key):
            per = baselines.noise_floor(t.table, seed=int(seed), min_size=min_eval_size)
            per = with_distributions(_columns(t, per), t.table.dist, "truth")
            t.store.save(floor_key, {**t.context, **metrics.summarize(per), "seconds": 0.0}, per)
            saved += 1
    names = list(dict.fromkeys(names))
    fitted: dict = {}
    for name in names:
        todo = [t for t in truths if t.pending(name)]
        eb = f"EB-{name}"
        needed_as_prior = eb in names and any(t.pending(eb) for t in truths)
        if not todo and not needed_as_prior:
            continue
        t0 = time.perf_counter()
        model = fit(name, fitted)
        fit_seconds = time.perf_counter() - t0
        fitted[name] = model
        for t in todo:
            t1 = time.perf_counter()
            pred = model.predict(t)
            per = metrics.evaluate(pred, t.table, min_eval_size)
            per = with_distributions(_columns(t, per), pred, "pred")
            record = {**t.context, **metrics.summarize(per), "seconds": fit_seconds + time.perf_counter() - t1,
                      "fit_seconds": fit_seconds, **model.record}
            t.store.save(t.key(name), record, per)
            saved += 1
            if progress:
                progress(f"{t.label} {name}: jsd={record['jsd_mean']:.4f} wd_scaled={record['wd_scaled_mean']:.4f} "
                         f"({record['seconds']:.1f}s)")
    return saved


def _columns(t: Truth, per: pd.DataFrame) -> pd.DataFrame:
    return t.columns(per) if t.columns is not None else per


# --------------------------------------------------------------------------
# Enhancement
# --------------------------------------------------------------------------


def _order_methods(names: Sequence[str]) -> list[str]:
    """EB-X after X, so the shrinkage reuses the fitted X."""
    names = list(dict.fromkeys(names))
    return sorted(names, key=lambda m: (m.startswith("EB-") and m.removeprefix("EB-") in names, names.index(m)))


#: EnhancementConfig fields that do not change a stored result (they select which keys run, or where things go).
_NOT_IN_STORE = ("seeds", "methods", "questions", "modes", "data_dir", "source", "prefix_cache", "store_root",
                 "output_dir", *MODEL_PLACEMENT_FIELDS)


def store_settings(cfg: EnhancementConfig, mode: str, survey) -> dict:
    """The resolved settings a stored Enhancement result depends on (defaults filled in, background resolved)."""
    params = EnhancementConfig.to_params(cfg)
    conf = {f.name: params[f.name] for f in fields(EnhancementConfig) if f.name not in _NOT_IN_STORE}
    conf["background"] = list(survey.check_background(cfg.background))
    conf["mode"] = mode
    return conf


def _survey_of(cfg, survey=None):
    """``survey``, or the survey of ``cfg`` loaded with only the questions and background it uses."""
    if survey is not None:
        return survey
    return surveys.load_survey(cfg.dataset, data_dir=cfg.data_dir, source=cfg.source, questions=questions_to_load(cfg),
                               background=cfg.background)


def questions_to_load(cfg):
    """The questions a run needs from the data file: its own, or all when a method learns from the other questions."""
    if methods.uses_other_questions(getattr(cfg, "methods", ())):
        return None
    return cfg.questions


def store_dir_for(cfg: EnhancementConfig, mode: str, root: str | Path = DEFAULT_STORE_ROOT, survey=None) -> Path:
    """The shared store of a configuration and truth mode: ``root/enhancement-<dataset>-<mode>-n<n>-<hash>``.

    The hash covers :func:`dsalib.stores.store_key` of :func:`store_settings`
    (code version, resolved settings, dataset spec, data fingerprint), so
    every study that runs the Enhancement protocol with the same settings
    (``enhancement``, ``unseen_backgrounds``, ``robustness``,
    ``data_efficiency``, ``ablations``) reuses the results, and any change
    that could change a result gives a new store.  ``survey``: the loaded
    survey (loaded from ``cfg`` when not given).
    """
    survey = _survey_of(cfg, survey)
    key = store_key("enhancement", store_settings(cfg, mode, survey), survey)
    return store_dir(root, ["enhancement", survey.name, mode, f"n{cfg.n}"], key)


def _open_stores(cfg, modes, survey, store_root, store_dir_arg) -> dict:
    stores = {}
    for mode in modes:
        key = store_key("enhancement", store_settings(cfg, mode, survey), survey)
        path = (Path(store_dir_arg) if store_dir_arg is not None
                else store_dir(store_root, ["enhancement", survey.name, mode, f"n{cfg.n}"], key))
        stores[mode] = ResultStore(path, config=key)
    return stores


def run_enhancement(cfg: EnhancementConfig, store_dir: str | Path | None = None, lm=None, progress=print,
                    modes: Sequence[str] | None = None, store_root: str | Path = DEFAULT_STORE_ROOT,
                    survey=None, floor: bool = True) -> pd.DataFrame:
    """Run (or resume) the Enhancement protocol; returns the stores' tidy table (column ``truth_mode``).

    ``modes``: the ground-truth modes to evaluate (default ``cfg.modes``).
    The training sample of a seed is the same in every mode, so each method
    is fitted once per (question, seed) and scored against every mode's
    truth (:func:`fit_and_score`).  Each mode has its own store: ``store_dir``
    (one mode only) or the shared :func:`store_dir_for` under ``store_root``.
    ``survey``: the loaded survey (loaded from ``cfg`` when not given).
    ``floor=False``: the noise floor is left to another job (:mod:`dsalib.grid`).
    """
    if not isinstance(cfg, EnhancementConfig):
        raise ParameterError(f"run_enhancement needs an EnhancementConfig, got {type(cfg).__name__}")
    modes = list(dict.fromkeys(modes if modes is not None else cfg.modes))
    bad = [m for m in modes if m not in surveys.TRUTH_MODES]
    if bad or not modes:
        raise ParameterError(f"truth modes must be a non-empty list among {surveys.TRUTH_MODES}, got {modes}")
    if store_dir is not None and len(modes) > 1:
        raise ParameterError("store_dir names one store; with several truth modes give store_root instead")
    from .distributed import fsdp_launched

    if fsdp_launched() and cfg.strategy == "last_layer" and any(map(methods.trains_model, cfg.methods)):
        raise ParameterError(
            f"an FSDP launch shards the lora and full strategies, but strategy is last_layer for "
            f"{[m for m in cfg.methods if methods.trains_model(m)]}; set strategy to lora or full, or launch "
            "last_layer with configs/accelerate/multi_gpu.yaml (it needs no sharding)")
    survey = _survey_of(cfg, survey)
    if (cfg.weighted_truth or cfg.weighted_train) and not survey.weight:
        raise ParameterError(
            f"weighted_truth/weighted_train: dataset '{survey.name}' ({survey.source_name}) has no respondent "
            "weight: " + survey.unavailable.get("weight", "its spec names no weight column; leave both false"))
    questions = surveys.iter_questions(survey, cfg.questions)
    attrs = survey.check_background(cfg.background)
    for q in questions:
        surveys.check_levels_populated(survey, q, attrs)
    stores = _open_stores(cfg, modes, survey, store_root, store_dir)
    order = _order_methods(cfg.methods)
    if lm is not None:
        lm.chat_template = cfg.chat_template  # a loaded model reads the prompts the way this configuration says
    commit = code_version()["commit"][:12]  # each record says which code computed it (stores outlive commits)
    units = []  # (question, seed, training table, truths) with something left to compute
    for q in questions:
        for seed in cfg.seeds:
            def key(name, q=q, seed=seed):
                return RunKey("enhancement", survey.name, q, int(seed), name)

            if not any(stores[mode].pending([key(m) for m in order + (["floor"] if floor else [])]) for mode in modes):
                continue
            splits = {mode: surveys.enhancement_split(survey, q, cfg.n, int(seed), mode, attrs, cfg.weighted_truth,
                                                        cfg.weighted_train)
                      for mode in modes}
            truths = []
            for mode, split in splits.items():
                context = {k: v for k, v in split.describe().items() if k not in ("dataset", "question", "seed")}
                context.update(source=survey.source_name, source_respondents=survey.n_respondents,
                               template=cfg.template, code_commit=commit)
                table = split.truth.subset(split.truth.n >= cfg.min_eval_size)

                def train_n(per, table=table, split=split):
                    per = per.copy()
                    per.insert(2, "train_n", split.train.lookup(table.keys)[1])
                    return per

                truths.append(Truth(stores[mode], key, table, context, f"{survey.name} {q} seed={seed} [{mode}]",
                                    columns=train_n))
            units.append((q, seed, splits[modes[0]].train, truths))
    llm_units = [u for u in units if any(methods.needs_model(m) and any(t.pending(m) for t in u[3]) for m in order)]
    if llm_units and lm is None:
        from .llm_methods import LanguageModel

        lm = LanguageModel.from_config(cfg)
    if llm_units:
        warm_prefix(lm, survey, attrs, llm_units, order, cfg.template, cfg.strategy, progress)
    for q, seed, train, truths in units:
        def fit(name, fitted, seed=seed, train=train):
            prior = fitted[name.removeprefix("EB-")].method if name.startswith("EB-") and \
                name.removeprefix("EB-") in fitted else None
            method = methods.make_method(name, lm=lm, survey=survey, prior=prior,
                                         phase1=replace(cfg.phase1, seed=int(seed)),
                                         phase2=replace(cfg.phase2, seed=int(seed)), strategy=cfg.strategy,
                                         seed=int(seed), template=cfg.template)
            method.fit(train)
            extra = {}
            if methods.needs_model(name):
                extra["model"] = cfg.model
                extra["option_rule"] = lm.describe(train.n_options)
            if getattr(method, "report", None):
                extra["report"] = method.report
            if hasattr(method, "alpha_"):
                extra["eb_alpha"] = method.alpha_
            return Fitted(lambda t: method.predict(t.table.keys), extra, method)

        fit_and_score(order, truths, fit, int(seed), cfg.min_eval_size, progress, floor=floor)
    frames = []
    for mode in modes:
        df = stores[mode].load_all()
        if len(df):
            df["truth_mode"] = mode
        frames.append(df)
    return rows_of(cfg, pd.concat(frames, ignore_index=True), questions)


def warm_prefix(lm, survey, attrs, units, names, template: str, strategy: str = "last_layer",
                progress=print) -> int:
    """Compute, in one pass, the frozen prefix of every prompt that the methods ``names`` still have to read
    for ``units`` ((question, seed, training table, truths)), as :func:`dsalib.methods.prompt_reads` says.

    Prompts of one subgroup share its background block across questions and templates, and one pass
    computes each shared opening once (:meth:`LanguageModel.warm_prefix`).  A method counts for a unit when
    some truth still lacks its result, or when it is the prior of a pending ``EB-`` method.  Returns the
    number of prompts computed (0 when every prompt was cached already)."""
    wanted: dict = {}  # (question, template) -> list of key arrays
    most = 2
    for q, _, train, truths in units:
        pending = [m for m in names if any(t.pending(m) for t in truths)]
        pending += [m.removeprefix("EB-") for m in pending if m.startswith("EB-")]
        for m in dict.fromkeys(pending):
            reads = methods.prompt_reads(m, template, strategy)
            if reads is None:
                continue
            tpl, with_train = reads
            keys = wanted.setdefault((q, tpl), [])
            keys += [t.table.keys for t in truths] + ([train.keys] if with_train else [])
            most = max(most, train.n_options)
    prompt_list = []
    for (q, tpl), keys in wanted.items():
        prompt_list += lm.build_prompts(survey, q, np.unique(np.concatenate(keys), axis=0), attrs, tpl)
    if not prompt_list:
        return 0
    computed = lm.warm_prefix(prompt_list, most, progress=progress is not None)
    if progress and computed:
        progress(f"frozen prefix: {computed} prompts computed in one pass (shared openings once)")
    return computed


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


def load_per_subgroup_modes(cfg: EnhancementConfig, modes: Sequence[str] | None = None,
                            store_root: str | Path = DEFAULT_STORE_ROOT, survey=None) -> pd.DataFrame:
    """The per-subgroup rows of ``cfg`` (:func:`rows_of`) in its shared stores, for each truth mode (column ``truth_mode``).

    ``modes``: default ``cfg.modes``.
    """
    survey = _survey_of(cfg, survey)
    frames = []
    for mode in (modes if modes is not None else cfg.modes):
        df = ResultStore(store_dir_for(cfg, mode, store_root, survey)).load_all_per_subgroup()
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
