"""DSA in the paper's regime: Enhancement on a large survey with many respondents per training subgroup.

The paper trains on n = 4,000 respondents, about 100 per evaluated subgroup;
our reference runs have about 5.  This study (``notebooks/dsa_regime.ipynb``,
:class:`dsalib.config.DsaRegimeConfig`) runs the Enhancement protocol on a
large embedded survey with a background coarse enough that training
subgroups average at least ``min_mean_train_size`` respondents, and compares
(:data:`VARIANTS`) on the same training samples:

- ``TKFT``: Phase 1 with the project's epoch selection (``cfg.phase1``);
- ``DSA``: the same Phase 1, then Phase 2 kept only if it does not raise the
  validation cross-entropy (the guard; ``cfg.phase2``);
- ``DSA (no guard)``: the same, Phase 2 always kept;
- ``TKFT (paper)`` / ``DSA (paper)``: the paper's setting, Phase 1 for
  ``paper_phase1`` (one epoch at lr 5e-5), Phase 2 with ``paper_phase2``
  (pairs of ≥ 10 respondents, no guard);
- ``DSA-ratio``: Phase 2 with Theorem 1's ratio operator and targets fixed
  at the Phase 1 predictions (what the known-truth check motivates), no guard;

beside the statistical references ``cfg.baselines`` (TS, MNL).  Every DSA run
reports its training pairs, attribute changes, Phase 2 steps and outcome, and
the change in JSD that Phase 2 made: the DSA run's JSD minus that of the TKFT
run with the same Phase 1 (:func:`phase2_runs`).

Every variant is an ordinary Enhancement configuration
(:func:`variant_configs`), so its results live in the shared result stores
and a rerun resumes.  The variants of one (question, seed) run one after the
other on one loaded model, so DSA reuses its TKFT's Phase 1 (the Phase 1
memo of :class:`dsalib.llm_methods.LanguageModel`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import pandas as pd

from . import experiments, surveys
from .errors import ParameterError


@dataclass(frozen=True)
class Variant:
    """One arm of the comparison: which Phase 1/Phase 2 settings, and what its TKFT and DSA are called."""

    name: str
    phase1: str  # "study" (cfg.phase1) or "paper" (cfg.paper_phase1)
    phase2: str  # "study", "noguard", "paper" or "ratio"
    tkft: str | None  # the name its TKFT row gets (None: not run; it shares the TKFT of its Phase 1)
    dsa: str  # the name its DSA row gets
    tkft_of_phase1: str  # the TKFT row with the same Phase 1 (the base of the Phase 2 change)


VARIANTS = (
    Variant("selected", "study", "study", "TKFT", "DSA", "TKFT"),
    Variant("no guard", "study", "noguard", None, "DSA (no guard)", "TKFT"),
    Variant("paper", "paper", "paper", "TKFT (paper)", "DSA (paper)", "TKFT (paper)"),
    Variant("ratio", "study", "ratio", None, "DSA-ratio", "TKFT"),
)

#: The row names in the order the tables show them.
METHOD_ORDER = ("TS", "MNL", "TKFT", "DSA", "DSA (no guard)", "DSA-ratio", "TKFT (paper)", "DSA (paper)")


def variant_configs(cfg) -> list[tuple[Variant, experiments.EnhancementConfig, dict]]:
    """``(variant, Enhancement configuration, {stored method name: row name})`` of every variant of ``cfg``.

    The baselines (TS, MNL, ...) run with the first variant only: they do not
    depend on the fine-tuning settings.
    """
    out = []
    for i, v in enumerate(VARIANTS):
        p1 = cfg.phase1 if v.phase1 == "study" else cfg.paper_phase1
        p2 = {"study": cfg.phase2, "noguard": replace(cfg.phase2, guard=False), "paper": cfg.paper_phase2,
              "ratio": replace(cfg.phase2, guard=False, operator="ratio", reference="phase1")}[v.phase2]
        methods = (list(cfg.baselines) if i == 0 else []) + (["TKFT"] if v.tkft else []) + ["DSA"]
        names = {"DSA": v.dsa, **({"TKFT": v.tkft} if v.tkft else {})}
        out.append((v, cfg.enhancement(methods=methods, phase1=p1, phase2=p2), names))
    return out


def check_regime(cfg, survey: surveys.Survey) -> pd.DataFrame:
    """Training subgroups per question at ``cfg.n`` (seed 0's sample); an error when their mean size is below
    ``cfg.min_mean_train_size`` (the background is too fine for the paper's regime)."""
    rows = []
    attrs = survey.check_background(cfg.background)
    for q in surveys.iter_questions(survey, cfg.questions):
        split = surveys.enhancement_split(survey, q, cfg.n, int(cfg.seeds[0]), "heldout", attrs)
        t = split.train
        rows.append({"question": q, "training subgroups": t.n_subgroups,
                     "mean training respondents": t.n_respondents / max(t.n_subgroups, 1),
                     "smallest": int(t.n.min()), "largest": int(t.n.max())})
    table = pd.DataFrame(rows)
    low = table[table["mean training respondents"] < cfg.min_mean_train_size]
    if len(low):
        raise ParameterError(
            f"background {list(attrs)} leaves {low['mean training respondents'].min():.1f} training respondents per "
            f"subgroup on average for {list(low.question)} at n = {cfg.n}; the paper's regime needs at least "
            f"{cfg.min_mean_train_size}: choose fewer or coarser background attributes, or a larger n")
    return table


def run_regime(cfg, lm=None, store_root=experiments.DEFAULT_STORE_ROOT, survey=None, progress=print) -> pd.DataFrame:
    """Run (or resume) every variant for every question and seed; returns the tidy rows with ``method`` renamed.

    Columns as :func:`dsalib.experiments.run_enhancement`, plus ``variant``
    and the Phase 2 diagnostics of DSA rows (``pairs``, ``attribute_changes``,
    ``phase2_steps``, ``phase2_outcome``, ``phase1_epochs``).
    """
    survey = experiments._survey_of(cfg, survey)
    configs = variant_configs(cfg)
    questions = surveys.iter_questions(survey, cfg.questions)
    frames = {v.name: [] for v, _, _ in configs}
    for q in questions:  # one (question, seed) through every variant: DSA reuses its TKFT's Phase 1 on one model
        for seed in cfg.seeds:
            for v, c, _ in configs:
                experiments.run_enhancement(c.replace(questions=[q], seeds=[seed]), lm=lm, store_root=store_root,
                                            survey=survey, progress=progress)
    out = []
    for v, c, names in configs:
        df = experiments.run_enhancement(c, lm=lm, store_root=store_root, survey=survey, progress=None)
        df = df[df.method != "floor"] if v is not VARIANTS[0] else df
        df = df.assign(variant=v.name, method=df.method.map(lambda m: names.get(m, m)))
        out.append(df.join(_phase2_columns(df)))
    return pd.concat(out, ignore_index=True)


def _phase2_columns(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for rep in df.get("report", pd.Series([None] * len(df), index=df.index)):
        rep = rep if isinstance(rep, dict) else {}
        p2 = rep.get("phase2") or {}
        trial = (rep.get("selection") or {}).get("phase2") or {}  # a rejected Phase 2 ran only in the trial
        rows.append({"pairs": p2.get("pairs"), "attribute_changes": p2.get("attribute_changes",
                                                                          trial.get("attribute_changes")),
                     "phase2_steps": p2.get("steps"), "phase2_outcome": p2.get("outcome"),
                     "phase1_epochs": (rep.get("phase1") or {}).get("epochs")})
    return pd.DataFrame(rows, index=df.index)


KEYS = ["question", "seed", "truth_mode"]


def phase2_runs(res: pd.DataFrame) -> pd.DataFrame:
    """One row per DSA run: its JSD, the JSD of the TKFT with the same Phase 1, the change Phase 2 made, and
    the pairs, attribute changes, steps and outcome of Phase 2."""
    base_of = {v.dsa: v.tkft_of_phase1 for v in VARIANTS}
    dsa = res[res.method.isin(list(base_of))].copy()
    tkft = res[res.method.isin(set(base_of.values()))].set_index(KEYS + ["method"]).jsd_mean
    dsa["tkft_jsd"] = [tkft.get((*k, base_of[m]), np.nan) for k, m in
                       zip(dsa[KEYS].itertuples(index=False), dsa.method)]
    dsa["phase2_change_jsd"] = dsa.jsd_mean - dsa.tkft_jsd
    cols = KEYS + ["method", "jsd_mean", "tkft_jsd", "phase2_change_jsd", "pairs", "attribute_changes",
                   "phase2_steps", "phase2_outcome", "phase1_epochs"]
    return dsa[cols].sort_values(KEYS + ["method"], key=_method_key).reset_index(drop=True)


def phase2_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per truth mode and DSA variant: mean change in JSD, how often Phase 2 lowered the error, and what it did."""
    g = runs.assign(lowered=runs.phase2_change_jsd < 0, ran=runs.phase2_outcome.eq("run")).groupby(
        ["truth_mode", "method"], sort=False)
    out = g.agg(runs=("jsd_mean", "size"), phase2_change_jsd=("phase2_change_jsd", "mean"),
                change_sd=("phase2_change_jsd", "std"), lowered_share=("lowered", "mean"),
                phase2_run_share=("ran", "mean"), pairs=("pairs", "mean"),
                attribute_changes=("attribute_changes", "mean"), phase2_steps=("phase2_steps", "mean"))
    return out.reset_index()


def summary(res: pd.DataFrame) -> pd.DataFrame:
    """Mean JSD per truth mode and row (mean over questions and seeds), ± s.d. over seeds, in :data:`METHOD_ORDER`."""
    per_seed = res.groupby(["truth_mode", "method", "seed"]).jsd_mean.mean()
    out = per_seed.groupby(["truth_mode", "method"]).agg(["mean", "std"]).rename(
        columns={"mean": "jsd_mean", "std": "jsd_sd"}).reset_index()
    return out.sort_values(["truth_mode", "method"], key=_method_key).reset_index(drop=True)


def _method_key(col: pd.Series) -> pd.Series:
    if col.name != "method":
        return col
    order = {m: i for i, m in enumerate(METHOD_ORDER + ("floor",))}
    return col.map(lambda m: order.get(m, len(order)))


def findings(res: pd.DataFrame, runs: pd.DataFrame, modes: Sequence[str]) -> dict:
    """The numbers the report states (per truth mode): best row, DSA vs TKFT, Phase 2's effect per variant."""
    s = summary(res).set_index(["truth_mode", "method"]).jsd_mean
    p = phase2_summary(runs).set_index(["truth_mode", "method"])
    out = {}
    for mode in modes:
        rows = s.loc[mode].drop("floor", errors="ignore")
        out[f"{mode}_best"] = rows.idxmin()
        for m, v in rows.items():
            out[f"{mode}_{m}"] = float(v)
        for m in p.loc[mode].index:
            out[f"{mode}_{m}_change"] = float(p.loc[(mode, m), "phase2_change_jsd"])
            out[f"{mode}_{m}_lowered"] = float(p.loc[(mode, m), "lowered_share"])
    return out
