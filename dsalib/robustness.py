"""Robustness and ablation tables (DSA paper sections 3.7, 3.9, 3.10; Tables 3, 4, 5).

All functions work on the tables the Enhancement stores hold
(:func:`dsalib.experiments.run_enhancement`, one row per question, seed,
method and truth mode; :func:`dsalib.experiments.load_per_subgroup_modes`, one
row per evaluated subgroup with its ``pred_*`` and ``truth_*`` distribution).

Better than TS (Table 3)
    :func:`better_than_reference` pairs each method's per-subgroup error with
    the training sample's (``TS``) on the same subgroup, question, seed and
    truth mode and counts the subgroups where the method is strictly closer to
    the truth.  Shares are pooled over subgroups (the paper's "proportion of
    backgrounds"); ``floor`` (a same-size resample of the truth) is the
    reference row: it says how often pure sampling noise of the truth size
    already beats the training sample.

Prompt consistency (Table 4)
    :func:`pairwise_template_jsd` takes one method's predictions for the same
    subgroup under several prompt templates and averages the JSD over every
    pair of templates (lower = more robust to wording).

Ablations (Table 5)
    :func:`label_runs` tags a results table with the ablation settings (model,
    strategy, Phase 1 epoch rule), :func:`ablation_summary` averages each
    setting over questions and seeds (checking that every setting covers the
    same runs), :func:`paired_difference` compares two methods run by run and
    :func:`phase2_reports` unpacks DSA's Phase 2 report (pairs, kept or not).
"""

from __future__ import annotations

from itertools import combinations
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from . import metrics
from .errors import DsaError
from .stores import DEFAULT_STORE_ROOT

#: The columns that identify one fitted result (besides the method).
RUN_KEYS = ("truth_mode", "question", "seed")
#: Rows that are never methods in a comparison table.
REFERENCE_ROWS = ("floor",)


def _require(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DsaError(f"{what} needs the column(s) {missing}; it has {sorted(df.columns)}")


def better_than_reference(per: pd.DataFrame, methods: Sequence[str] | None = None, reference: str = "TS",
                          metric: str = "jsd", group: Sequence[str] = RUN_KEYS) -> pd.DataFrame:
    """Per group (default truth mode, question, seed) and method: subgroups where the method beats ``reference``.

    ``per``: per-subgroup rows (columns ``method``, ``subgroup``, ``metric`` and
    the ``group`` columns).  Returns one row per group and method with
    ``better`` (count of subgroups with error strictly below the reference's),
    ``subgroups`` (subgroups compared) and ``share`` (their ratio, as
    :func:`dsalib.metrics.better_share`).  A method missing a subgroup the
    reference has (or the other way round) is an error: the comparison must be
    on the same subgroups.
    """
    group = list(group)
    _require(per, group + ["method", "subgroup", metric], "better_than_reference")
    if reference not in set(per.method):
        raise DsaError(f"no {reference!r} rows to compare with; run {reference} with the other methods")
    methods = [m for m in (methods or sorted(set(per.method))) if m != reference]
    absent = [m for m in methods if m not in set(per.method)]
    if absent:
        raise DsaError(f"no per-subgroup rows for method(s) {absent}; present: {sorted(set(per.method))}")
    ref = per[per.method == reference].set_index(group + ["subgroup"])[metric]
    if ref.index.duplicated().any():
        raise DsaError(f"{reference} has duplicate rows for a subgroup; group by more columns than {group}")
    rows = []
    for m in methods:
        mine = per[per.method == m].set_index(group + ["subgroup"])[metric]
        if mine.index.duplicated().any():
            raise DsaError(f"{m} has duplicate rows for a subgroup; group by more columns than {group}")
        ref_here = ref[ref.index.droplevel("subgroup").isin(mine.index.droplevel("subgroup").unique())]
        if len(mine) != len(ref_here) or not mine.index.sort_values().equals(ref_here.index.sort_values()):
            raise DsaError(f"{m} and {reference} were evaluated on different subgroups; compare runs of the "
                           "same truth (same truth mode, question, seed and min_eval_size)")
        both = pd.DataFrame({"m": mine, "r": ref_here.reindex(mine.index)})
        for keys, g in both.groupby(level=group, sort=True):
            keys = keys if isinstance(keys, tuple) else (keys,)
            share = metrics.better_share(g["m"].to_numpy(), g["r"].to_numpy())
            rows.append({**dict(zip(group, keys)), "method": m, "better": int(round(share * len(g))),
                         "subgroups": int(len(g)), "share": share})
    return pd.DataFrame(rows)


def pool_shares(shares: pd.DataFrame, by: Sequence[str] = ("truth_mode",)) -> pd.DataFrame:
    """Pool :func:`better_than_reference` rows over everything not in ``by``: better / subgroups per method.

    Also gives the spread of the per-row shares (``share_min``, ``share_max``)
    and how many rows (e.g. question x seed) were pooled (``runs``).
    """
    by = list(by)
    _require(shares, by + ["method", "better", "subgroups", "share"], "pool_shares")
    g = shares.groupby(by + ["method"], sort=False)
    out = g.agg(better=("better", "sum"), subgroups=("subgroups", "sum"), share_min=("share", "min"),
                share_max=("share", "max"), runs=("share", "size")).reset_index()
    out.insert(len(by) + 1, "share", out.better / out.subgroups)
    return out


def prediction_columns(df: pd.DataFrame, prefix: str = "pred") -> list[str]:
    """``<prefix>_0``, ``<prefix>_1``, ... in option order."""
    cols = [c for c in df.columns if c.startswith(prefix + "_") and c[len(prefix) + 1:].isdigit()]
    return sorted(cols, key=lambda c: int(c[len(prefix) + 1:]))


def pairwise_template_jsd(per: pd.DataFrame, templates: Sequence[str] | None = None,
                          methods: Sequence[str] | None = None,
                          keys: Sequence[str] = ("question", "seed", "subgroup")) -> pd.DataFrame:
    """Mean pairwise JSD of each method's predictions across prompt templates, per subgroup.

    ``per``: per-subgroup rows with columns ``template``, ``method``, the
    ``keys`` and ``pred_0..pred_{K-1}`` (NaN past a question's K options).
    For every method and key (a subgroup of one question and seed) the
    predictions under each pair of templates are compared; returns one row
    per method and key with ``pairwise_jsd`` (mean over the pairs),
    ``max_pair_jsd`` and ``templates``.  A method with a (question, seed) run
    missing under some template, or a subgroup predicted under some templates
    but not others, is an error.
    """
    keys = list(keys)
    _require(per, ["template", "method"] + keys, "pairwise_template_jsd")
    templates = list(dict.fromkeys(templates or sorted(set(per.template))))
    if len(templates) < 2:
        raise DsaError(f"pairwise consistency needs at least two prompt templates, got {templates}")
    methods = list(dict.fromkeys(methods or sorted(set(per.method))))
    pcols = prediction_columns(per)
    if not pcols:
        raise DsaError("no pred_* columns: load the per-subgroup tables of the stores (with distributions)")
    per = per[per.template.isin(templates) & per.method.isin(methods)]
    rows = []
    for m in methods:
        sub = per[per.method == m]
        if sub.empty:
            raise DsaError(f"no predictions of method {m!r} under templates {templates}")
        wide = {}
        for t in templates:
            st = sub[sub.template == t].set_index(keys)
            if st.empty:
                raise DsaError(f"method {m!r} has no predictions under template {t!r}")
            if st.index.duplicated().any():
                raise DsaError(f"method {m!r} has duplicate predictions for one subgroup under template {t!r}")
            wide[t] = st[pcols]
        index = wide[templates[0]].index
        for t in templates[1:]:
            if not wide[t].index.sort_values().equals(index.sort_values()):
                diff = wide[t].index.symmetric_difference(index)
                raise DsaError(f"method {m!r}: templates {templates[0]!r} and {t!r} cover different subgroups "
                               f"(e.g. {list(diff[:3])}); run every template on the same questions and seeds")
        stack = np.stack([wide[t].reindex(index).to_numpy(float) for t in templates])  # T x S x K
        valid = ~np.isnan(stack).any(axis=0)  # S x K: options the question has
        pair_vals = []
        for a, b in combinations(range(len(templates)), 2):
            vals = np.empty(len(index))
            for k_opts in np.unique(valid.sum(axis=1)):
                rows_k = valid.sum(axis=1) == k_opts
                pa = stack[a][rows_k][:, :k_opts]
                pb = stack[b][rows_k][:, :k_opts]
                vals[rows_k] = metrics.jsd(pa, pb)
            pair_vals.append(vals)
        pv = np.stack(pair_vals)
        frame = index.to_frame(index=False)
        frame.insert(0, "method", m)
        frame["pairwise_jsd"] = pv.mean(axis=0)
        frame["max_pair_jsd"] = pv.max(axis=0)
        frame["templates"] = len(templates)
        rows.append(frame)
    return pd.concat(rows, ignore_index=True)


def consistency_summary(pairwise: pd.DataFrame, by: Sequence[str] = ("method",), scale: float = 100.0
                        ) -> pd.DataFrame:
    """Mean (and spread) of :func:`pairwise_template_jsd` per ``by``; ``pairwise_jsd_x100`` as the paper's Table 4."""
    by = list(by)
    _require(pairwise, by + ["pairwise_jsd", "max_pair_jsd"], "consistency_summary")
    out = pairwise.groupby(by, sort=False).agg(pairwise_jsd=("pairwise_jsd", "mean"),
                                               pairwise_jsd_sd=("pairwise_jsd", "std"),
                                               max_pair_jsd=("max_pair_jsd", "max"),
                                               subgroups=("pairwise_jsd", "size")).reset_index()
    out.insert(len(by), f"pairwise_jsd_x{scale:g}", out.pairwise_jsd * scale)
    return out


def template_errors(res: pd.DataFrame, metric: str = "jsd_mean", by: Sequence[str] = ("truth_mode",)) -> pd.DataFrame:
    """Each method's mean error under each template (rows: ``by`` + method; columns: templates)."""
    by = list(by)
    _require(res, by + ["method", "template", metric], "template_errors")
    return res.pivot_table(index=by + ["method"], columns="template", values=metric, aggfunc="mean")


def label_runs(res: pd.DataFrame, **labels) -> pd.DataFrame:
    """A copy of ``res`` with constant columns for the ablation settings (e.g. ``model=..., strategy=...``)."""
    out = res.copy()
    for k, v in labels.items():
        out[k] = v
    return out


PHASES = {"TKFT": "1", "DSA": "1+2"}


def ablation_summary(runs: pd.DataFrame, settings: Sequence[str],
                     metric_cols: Sequence[str] = ("wd_scaled_mean", "wd_mean", "jsd_mean"),
                     by: Sequence[str] = ("truth_mode",)) -> pd.DataFrame:
    """Mean of each setting (``settings`` columns + method) over questions and seeds, with a ``phase`` column.

    Every setting of a method must cover the same (question, seed) runs as the
    others within a truth mode, otherwise the means are not comparable and
    this raises.  ``floor`` and ``TS`` rows are kept as references (phase
    ``-``).
    """
    settings, by = list(settings), list(by)
    _require(runs, by + settings + ["method", "question", "seed"] + list(metric_cols), "ablation_summary")
    runs = runs.copy()
    for (mode_key), g in runs.groupby(by, sort=False):
        cover = g.groupby(settings + ["method"], sort=False).apply(
            lambda x: frozenset(zip(x.question, x.seed)), include_groups=False)
        if cover.nunique() > 1:
            sizes = {tuple(np.atleast_1d(k)): len(v) for k, v in cover.items()}
            raise DsaError(f"ablation settings cover different (question, seed) runs in {dict(zip(by, np.atleast_1d(mode_key)))}: "
                           f"{sizes}; run every setting on the same questions and seeds")
    runs["phase"] = runs.method.map(PHASES).fillna("-")
    out = runs.groupby(by + settings + ["method", "phase"], sort=False, dropna=False).agg(
        **{c: (c, "mean") for c in metric_cols}, runs=("seed", "size")).reset_index()
    return out


def paired_difference(res: pd.DataFrame, method: str, baseline: str, metric: str = "wd_scaled_mean",
                      group: Sequence[str] = ("truth_mode",)) -> pd.DataFrame:
    """``method`` minus ``baseline`` on the same runs (question, seed): mean difference and share where lower."""
    group = list(group)
    _require(res, group + ["method", "question", "seed", metric], "paired_difference")
    idx = group + ["question", "seed"]
    a = res[res.method == method].set_index(idx)[metric]
    b = res[res.method == baseline].set_index(idx)[metric]
    common = a.index.intersection(b.index)
    if len(common) == 0:
        raise DsaError(f"{method} and {baseline} have no run (question, seed) in common")
    d = (a.loc[common] - b.loc[common]).rename("diff").reset_index()
    out = d.groupby(group, sort=False)["diff"].agg(mean_diff="mean", sd_diff="std", runs="size",
                                                   lower_share=lambda x: float((x < 0).mean())).reset_index()
    out.insert(len(group), "comparison", f"{method} - {baseline}")
    return out


def phase2_reports(res: pd.DataFrame, method: str = "DSA") -> pd.DataFrame:
    """One row per stored ``method`` run: chosen Phase 1 epochs, Phase 2 pairs, attribute changes and outcome."""
    _require(res, ["method", "question", "seed", "report"], "phase2_reports")
    sub = res[res.method == method]
    if "truth_mode" in sub.columns:  # one fit serves every truth mode: report it once
        sub = sub[sub.truth_mode == sub.truth_mode.iloc[0]] if len(sub) else sub
    rows = []
    for _, r in sub.iterrows():
        rep = r.report if isinstance(r.report, Mapping) else {}
        p1, p2 = rep.get("phase1", {}) or {}, rep.get("phase2", {}) or {}
        sel = rep.get("selection", {}) or {}
        rows.append({"question": r.question, "seed": int(r.seed), "strategy": rep.get("strategy"),
                     "phase1_epochs": p1.get("epochs"), "epochs_selected": bool(sel),
                     "phase2_pairs": p2.get("pairs"), "attribute_changes": p2.get("attribute_changes"),
                     "phase2_steps": p2.get("steps"), "phase2_outcome": p2.get("outcome"),
                     "note": p2.get("note") or ""})
    if not rows:
        raise DsaError(f"no {method} runs with a report to summarise")
    return pd.DataFrame(rows)


def check_model_names(models: Sequence[str]) -> list[str]:
    """Fail early on a model that cannot be loaded: each must be embedded, ``tiny``, a local folder or a hub id.

    A hub id must be in the local Hugging Face cache when offline mode is on
    (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``); otherwise loading may still
    download it.  Returns the names unchanged.
    """
    from pathlib import Path

    from . import lm as lm_mod
    from .errors import ParameterError

    if isinstance(models, str) or not all(isinstance(m, str) and m.strip() for m in models):
        raise ParameterError(f"models must be a list of model names, local folders or hub ids, got {models!r}")
    for m in models:
        if m in lm_mod.EMBEDDED_MODELS or m == lm_mod.TINY_MODEL or Path(m).expanduser().is_dir():
            continue
        looks_like_path = m.startswith(("/", ".", "~")) or m.count("/") > 1
        cached = False
        if not looks_like_path:
            try:
                from huggingface_hub import try_to_load_from_cache

                cached = isinstance(try_to_load_from_cache(m, "config.json"), str)
            except Exception:  # a malformed repo id
                cached = False
        if looks_like_path or (not cached and lm_mod._offline_requested()):
            raise ParameterError(
                f"model {m!r} is not an embedded model ({', '.join(lm_mod.EMBEDDED_MODELS)}, "
                f"{lm_mod.TINY_MODEL!r}), not an existing local folder"
                + ("" if looks_like_path else ", and not in the local Hugging Face cache (offline mode is on)")
                + "; give the folder of a model's files or an embedded name")
    return list(models)


# --------------------------------------------------------------------------
# Running the study's parts (the notebook only reads and draws)
# --------------------------------------------------------------------------


def run_training_sizes(cfg, sizes: Sequence[int], lm=None, store_root=DEFAULT_STORE_ROOT, survey=None,
                       progress=print) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run (or read back) the robustness study's methods at each training size; column ``train_size``.

    ``cfg``: a :class:`dsalib.config.RobustnessConfig`; each size runs its
    :meth:`~dsalib.config.RobustnessConfig.run_config` (TS, the study's methods and the
    floor) through :func:`dsalib.efficiency.run_sizes` (one shared store per size, so
    sizes another study computed are read back). Returns ``(results, per_subgroup)``:
    the per-(question, seed, method, truth mode) table and the per-subgroup rows of
    every size. Repeated sizes run once, in the order given.
    """
    from . import efficiency, experiments

    sizes = [int(s) for s in dict.fromkeys(sizes)]
    if not sizes:
        raise DsaError("run_training_sizes: no training sizes given; pass at least the study's n")
    bad = [s for s in sizes if s < 1]
    if bad:
        raise DsaError(f"run_training_sizes: training sizes must be positive integers, got {bad}")
    res, per = [], []
    for size in sizes:
        c = cfg.run_config(n=size)
        res.append(efficiency.run_sizes(c, [size], c.modes, store_root, lm=lm, progress=progress, survey=survey)
                   .rename(columns={"n": "train_size"}))
        per.append(experiments.load_per_subgroup_modes(c, store_root=store_root, survey=survey)
                   .assign(train_size=size))
    return pd.concat(res, ignore_index=True), pd.concat(per, ignore_index=True)


def run_templates(configs: Mapping, mode: str, lm=None, store_root=DEFAULT_STORE_ROOT, survey=None,
                  progress=print) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run (or read back) one protocol configuration per prompt template, scored against truth ``mode`` only.

    ``configs``: template name → :class:`~dsalib.config.EnhancementConfig` (e.g.
    ``{t: cfg.run_config(template=t, ...)}``). Returns ``(results, per_subgroup)`` with
    a ``template`` column, the input of :func:`pairwise_template_jsd` and
    :func:`template_errors`.
    """
    from . import experiments

    if not configs:
        raise DsaError("run_templates: no templates given")
    res, per = [], []
    for t, c in configs.items():
        res.append(experiments.run_enhancement(c, lm=lm, modes=[mode], store_root=store_root, survey=survey,
                                               progress=progress).assign(template=t))
        per.append(experiments.load_per_subgroup_modes(c, [mode], store_root, survey).assign(template=t))
    return pd.concat(res, ignore_index=True), pd.concat(per, ignore_index=True)


def better_sentence(pooled: pd.DataFrame, mode: str, methods: Sequence[str]) -> str:
    """The better-than-TS finding in one sentence, from :func:`pool_shares` rows (one training size).

    Methods are listed from the highest share to the lowest, then the noise floor's share
    (when present) as the reference: how often a same-size resample of the truth beats TS.
    """
    _require(pooled, ["truth_mode", "method", "share", "subgroups"], "better_sentence")
    part = pooled[pooled.truth_mode == mode].set_index("method")
    if part.index.duplicated().any():
        raise DsaError("better_sentence: one row per method is needed; select one training size first")
    absent = [m for m in methods if m not in part.index]
    if absent:
        raise DsaError(f"better_sentence: no {mode!r} rows for method(s) {absent}; present: {sorted(part.index)}")
    ranked = sorted(methods, key=lambda m: -float(part.share[m]))
    pct = lambda m: f"{100 * float(part.share[m]):.1f}%"  # noqa: E731
    listed = ", ".join(f"`{m}` on {pct(m)}" for m in ranked)
    label = {"full": "the full-data truth", "heldout": "the held-out truth"}.get(mode, f"truth {mode!r}")
    text = (f"With {label}, the share of the {int(part.subgroups.max()):,} evaluated subgroups where a method is "
            f"closer to the truth than `TS`: {listed}.")
    if "floor" in part.index:
        text += f" A same-size resample of the truth (the noise floor) is closer on {pct('floor')}."
    return text


def head_to_head(runs: pd.DataFrame, method: str = "DSA", baseline: str = "TKFT",
                 metrics_: Sequence[str] = ("wd_scaled_mean", "jsd_mean"),
                 setting: Sequence[str] = ("model", "strategy", "epochs")) -> pd.DataFrame:
    """How often ``method`` is below ``baseline`` on the same fit, over every setting of the ablation runs.

    ``runs``: :func:`label_runs` rows (one per part, setting, truth mode, question, seed and
    method); a (setting, truth mode, question, seed) counted by several parts counts once.
    Returns one row per truth mode and metric: ``lower`` (runs where ``method`` is strictly
    below), ``ties``, ``runs`` (paired runs) and ``mean_diff`` (``method`` minus ``baseline``).
    """
    setting = [c for c in setting if c in runs.columns]
    key = ["truth_mode", *setting, "question", "seed"]
    _require(runs, key + ["method", *metrics_], "head_to_head")
    rows = []
    for metric in metrics_:
        a = runs[runs.method == method].drop_duplicates(key).set_index(key)[metric]
        b = runs[runs.method == baseline].drop_duplicates(key).set_index(key)[metric]
        common = a.index.intersection(b.index)
        if len(common) == 0:
            raise DsaError(f"head_to_head: {method} and {baseline} share no fitted run; run both on the same settings")
        d = (a.loc[common] - b.loc[common]).rename("diff").reset_index()
        for mode, g in d.groupby("truth_mode", sort=False):
            rows.append({"truth_mode": mode, "metric": metric, "lower": int((g["diff"] < 0).sum()),
                         "ties": int((g["diff"] == 0).sum()), "runs": len(g), "mean_diff": float(g["diff"].mean())})
    return pd.DataFrame(rows)


def head_to_head_sentence(h2h: pd.DataFrame, method: str = "DSA", baseline: str = "TKFT") -> str:
    """The :func:`head_to_head` finding in one sentence per truth mode and metric ("never" when 0 runs)."""
    from .report import TRUTH_LABELS, column_label

    _require(h2h, ["truth_mode", "metric", "lower", "runs"], "head_to_head_sentence")
    parts = []
    for _, r in h2h.iterrows():
        count = "never" if r.lower == 0 else f"in {int(r.lower):,} of {int(r.runs):,} runs"
        ties = f", tied in {int(r.ties):,}" if r.get("ties", 0) else ""
        parts.append(f"{column_label(r.metric)} against the {TRUTH_LABELS.get(r.truth_mode, r.truth_mode)} truth: "
                     f"{count}{ties}" + (f" (of {int(r.runs):,})" if r.lower == 0 else ""))
    return (f"`{method}` was below `{baseline}` (on the same training sample and setting) — "
            + "; ".join(parts) + ".")


def run_ablations(cfg, store_root=DEFAULT_STORE_ROOT, survey=None, load_model=None,
                  progress=print) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """Run (or read back) every row of the ablations study; returns ``(runs, option_rules, phase_results)``.

    ``cfg``: a :class:`dsalib.config.AblationsConfig`. The parts, each tagged by
    :func:`label_runs` (columns ``part``, ``model``, ``strategy``, ``epochs``):

    - ``phase``: TS, TKFT and DSA with the default settings on every question and seed
      (the Enhancement study's own runs, read back from the shared stores);
    - ``selected``: the same on the subset of questions and seeds (the strategy reference);
    - ``strategy``: TS and ``strategy_methods`` per fine-tuning strategy at ``fixed_epochs``;
    - ``model``: the default settings per model of ``models`` (the study's own model reuses
      the ``selected`` rows).

    ``load_model``: name → language model (default: :meth:`dsalib.llm_methods.LanguageModel.from_config`
    of ``cfg`` with that name); one model is held at a time. ``option_rules``: model → its
    option rule. ``phase_results``: the ``phase`` part's rows without the labels.
    """
    import gc

    from . import experiments

    if load_model is None:
        from .llm_methods import LanguageModel

        def load_model(name):
            return LanguageModel.from_config(cfg, name)

    def run(c, lm):
        return experiments.run_enhancement(c, lm=lm, store_root=store_root, survey=survey, progress=progress)

    rules, parts = {}, []
    lm = load_model(cfg.model)
    rules[cfg.model] = lm.describe()
    res_default = run(cfg.run_config(subset=False), lm)
    parts.append(label_runs(res_default, part="phase", model=cfg.model, strategy="last_layer", epochs="selected"))
    res_subset = run(cfg.run_config(), lm)  # the same store: runs already done above are read back
    parts.append(label_runs(res_subset, part="selected", model=cfg.model, strategy="last_layer", epochs="selected"))
    for s in cfg.strategies:
        r = run(cfg.run_config(strategy=s, fixed=True, methods=["TS"] + list(cfg.strategy_methods)), lm)
        parts.append(label_runs(r, part="strategy", model=cfg.model, strategy=s, epochs=str(cfg.fixed_epochs)))
    for m in cfg.models:
        if m == cfg.model:
            r = res_subset
        else:
            lm = None
            gc.collect()  # free the previous model before loading the next
            lm = load_model(m)
            rules[m] = lm.describe()
            r = run(cfg.run_config(model=m), lm)
        parts.append(label_runs(r, part="model", model=m, strategy="last_layer", epochs="selected"))
    return pd.concat(parts, ignore_index=True), rules, res_default


def table5(runs: pd.DataFrame, metric: str = "wd_scaled_mean") -> pd.DataFrame:
    """The paper's Table 5 layout from :func:`run_ablations` rows: one row per (model, phase, strategy, epochs).

    TKFT (phase 1) and DSA (phase 1+2) of the strategy and model parts (each fit once, however
    many parts count it), mean ``metric`` over questions and seeds, one column per truth mode;
    then TS and the noise floor of the ``selected`` part as reference rows (model "reference").
    """
    _require(runs, ["part", "model", "strategy", "epochs", "truth_mode", "question", "seed", "method", metric],
             "table5")
    ft = runs[runs.method.isin(list(PHASES)) & (runs.part != "phase")].drop_duplicates(
        ["truth_mode", "question", "seed", "method", "model", "strategy", "epochs"])
    if ft.empty:
        raise DsaError("table5: no TKFT or DSA rows outside the phase part; run the strategy or model part")
    t5 = ft.assign(phase=ft.method.map(PHASES)).pivot_table(
        index=["model", "phase", "strategy", "epochs"], columns="truth_mode", values=metric, aggfunc="mean")
    refs = runs[runs.method.isin(["TS", "floor"]) & (runs.part == "selected")].pivot_table(
        index="method", columns="truth_mode", values=metric, aggfunc="mean")
    refs.index = pd.MultiIndex.from_tuples([("reference", m, "-", "-") for m in refs.index], names=t5.index.names)
    return pd.concat([t5, refs])
