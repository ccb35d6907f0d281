"""Data efficiency (paper 3.5, 3.8) and unseen backgrounds (paper 3.6): the logic of the two studies.

Both studies run the Enhancement protocol through
:func:`dsalib.experiments.run_enhancement` with its shared result stores, so a
configuration already computed by another study (e.g. ``enhancement`` at
n = 500) is read back, not recomputed.

**Data efficiency.**  TS (the training sample's subgroup distribution) is
scored on a grid of training sizes with many samples each; its mean error per
size is the *TS curve*.  A method trained on ``n`` respondents whose mean error
is ``e`` has the *TS-equivalent size* ``n_TS`` at which the TS curve reaches
``e`` (:func:`dsalib.metrics.ts_equivalent_size`: linear interpolation on the
running minimum of the curve), and the *data saving* ``1 - n / n_TS``.
Errors are averaged first over samples (seeds) per question, then over
questions, and the TS curve is always built from the same questions as the
method's error.  Where ``e`` lies outside the curve the result is censored and
labelled, never extrapolated:

- ``better than TS at every grid size``: ``n_TS`` is beyond the largest grid
  size; only the bound ``saving >= 1 - n / max(grid)`` is known;
- ``worse than TS at the smallest grid size``: ``n_TS`` is below the smallest
  grid size; only ``saving < 1 - n / min(grid)`` is known.

**Unseen backgrounds.**  The per-subgroup errors of every method, joined with
each subgroup's size in the training sample (``train_n``, recorded on the
noise-floor rows of the store), so subgroups absent from the training sample
(``train_n == 0``) can be told apart, and summarised by bins of truth size.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from . import metrics, methods as method_registry, surveys
from .errors import ParameterError

#: Per-run summary columns a study may use as its error (see :mod:`dsalib.metrics`).
METRICS = ("jsd_mean", "jsd_wmean", "wd_mean", "wd_wmean", "wd_scaled_mean", "wd_scaled_wmean")
#: Status of a TS-equivalent size.
WITHIN = "interpolated"
BEYOND = "better than TS at every grid size"
BELOW = "worse than TS at the smallest grid size"
#: Keys that identify one subgroup evaluation (one subgroup of one question, sample and truth).
SUBGROUP_KEYS = ("truth_mode", "question", "seed", "subgroup")


# --------------------------------------------------------------------------
# Parameter checks
# --------------------------------------------------------------------------


#: With the heldout truth, the share of eligible respondents a training size must leave outside the sample.
HELDOUT_SHARE = 0.25


def check_sizes(survey: surveys.Survey, questions: Sequence[str], background: Sequence[str] | None,
                sizes: Sequence[int], modes: Sequence[str], min_eval_size: int = 10, name: str = "sizes",
                at_least: int = 1) -> list[int]:
    """Training sizes checked against the data; returns them sorted.

    Each size must be a positive integer no larger than the respondents who
    answered every question and background attribute; with the ``heldout``
    truth at least :data:`HELDOUT_SHARE` of them (and ``min_eval_size``) must
    be left outside the sample, or the heldout truth of a large sample has no
    subgroup big enough to evaluate.  ``at_least``: the number of distinct sizes required.
    """
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise ParameterError(f"{name} must be a list of training sizes, got {sizes!r}")
    bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1]
    if bad:
        raise ParameterError(f"{name} must be positive integers; bad value(s) {bad}")
    if len(set(sizes)) != len(sizes):
        raise ParameterError(f"{name} lists a size twice: {list(sizes)}")
    if len(sizes) < at_least:
        raise ParameterError(f"{name} needs at least {at_least} distinct size(s), got {list(sizes)}")
    attrs = survey.check_background(background)
    for q in questions:
        eligible = len(survey.eligible(q, attrs))
        # the heldout truth must keep enough respondents for subgroups of min_eval_size to exist
        left = max(min_eval_size, int(np.ceil(HELDOUT_SHARE * eligible))) if "heldout" in modes else 0
        too_big = [int(s) for s in sizes if s > eligible - left]
        if too_big:
            need = (f" and leave {left} ({HELDOUT_SHARE:.0%}) for the heldout truth" if left else "")
            raise ParameterError(
                f"{name} {too_big} too large for question '{q}' of '{survey.name}' ({survey.source_name}): "
                f"{eligible} respondents answered it and every background attribute; sizes must be at most "
                f"{eligible - left}{need}")
    return sorted(int(s) for s in sizes)


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ParameterError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    return metric


# --------------------------------------------------------------------------
# Running the protocol at several training sizes
# --------------------------------------------------------------------------


def run_sizes(cfg, sizes: Sequence[int], modes: Sequence[str], store_root, lm=None,
              progress: Callable | None = print, survey=None) -> pd.DataFrame:
    """Run (or read back) the Enhancement protocol of ``cfg`` at each training size; column ``n``.

    One :func:`~dsalib.experiments.run_enhancement` call per size, each with
    its own shared store (the size is part of the store's key), so sizes
    already computed by any study are read back.  Only the rows of ``cfg``'s
    questions, seeds and methods (plus ``floor``) are returned
    (:func:`dsalib.experiments.rows_of`).
    """
    from .experiments import run_enhancement

    frames = []
    for n in sizes:
        c = dataclasses.replace(cfg, n=int(n))
        res = run_enhancement(c, lm=lm, modes=list(modes), store_root=store_root, progress=progress, survey=survey)
        res.insert(0, "n", int(n))
        frames.append(res)
    return pd.concat(frames, ignore_index=True)


def pending_count(cfg, modes: Sequence[str], store_root, survey=None) -> int:
    """How many (question, seed, method) results of ``cfg`` its shared stores still lack, over the truth modes.

    Zero means :func:`~dsalib.experiments.run_enhancement` only reads back,
    so a study can skip loading the language model.
    """
    from .experiments import store_dir_for
    from .results import ResultStore, RunKey

    if survey is None:
        survey = surveys.load_survey(cfg.dataset, data_dir=cfg.data_dir, source=cfg.source)
    keys = [RunKey("enhancement", cfg.dataset, q, int(seed), m)
            for q in surveys.iter_questions(survey, cfg.questions) for seed in cfg.seeds
            for m in list(cfg.methods) + ["floor"]]
    total = 0
    for mode in modes:
        path = store_dir_for(cfg, mode, store_root, survey)
        total += len(keys) if not path.exists() else len(ResultStore(path).pending(keys))
    return total


def stored_option_rule(res: pd.DataFrame):
    """The option rule recorded with the stored language-model results (None when there are none)."""
    if "option_rule" not in res.columns:
        return None
    rules = [r for r in res.option_rule if isinstance(r, dict)]
    return rules[0] if rules else None


# --------------------------------------------------------------------------
# The TS curve, TS-equivalent sizes and savings
# --------------------------------------------------------------------------


def _question_means(res: pd.DataFrame, metric: str, by: Sequence[str]) -> pd.DataFrame:
    """Mean over seeds per question, then mean (and spread) over questions; ``by`` keeps groups apart."""
    by = list(by)
    per_q = res.groupby(by + ["question"], as_index=False).agg(
        error=(metric, "mean"), seed_sd=(metric, "std"), samples=(metric, "size"))
    agg = dict(error=("error", "mean"), seed_sd=("seed_sd", "mean"), samples=("samples", "sum"),
               questions=("question", "nunique"))
    if not by:
        per_q["_all"] = 0
        return per_q.groupby("_all", as_index=False).agg(**agg).drop(columns="_all")
    return per_q.groupby(by, as_index=False).agg(**agg)


def ts_curve(res: pd.DataFrame, metric: str = "jsd_mean", questions: Sequence[str] | None = None) -> pd.DataFrame:
    """TS error per truth mode and training size: mean over seeds per question, then over questions.

    ``res``: the output of :func:`run_sizes` (rows of method ``TS``; other
    methods are ignored).  Columns ``truth_mode``, ``n``, ``error``,
    ``seed_sd`` (the sample-to-sample standard deviation, averaged over
    questions), ``samples`` and ``questions``.
    """
    check_metric(metric)
    ts = res[res.method == "TS"]
    if questions is not None:
        ts = ts[ts.question.isin(list(questions))]
    if ts.empty:
        raise ParameterError("no TS results for these questions: the TS grid must cover every question compared")
    return _question_means(ts, metric, ["truth_mode", "n"]).sort_values(["truth_mode", "n"]).reset_index(drop=True)


def curve_rises(curve: pd.DataFrame) -> pd.DataFrame:
    """Where the TS curve gets worse with more data: rows (truth_mode, n_from, n_to, rise) with rise > 0.

    ``curve``: :func:`ts_curve` output.  The equivalent sizes use the running
    minimum, so a rise makes the curve flat there; the notebook reports it.
    """
    rows = []
    for mode, c in curve.sort_values("n").groupby("truth_mode", sort=False):
        n, e = c.n.to_numpy(), c.error.to_numpy()
        best = np.minimum.accumulate(e)
        for i in range(1, len(e)):
            if e[i] > best[i - 1]:
                rows.append({"truth_mode": mode, "n_from": int(n[int(np.argmin(e[:i]))]), "n_to": int(n[i]),
                             "rise": float(e[i] - best[i - 1])})
    return pd.DataFrame(rows, columns=["truth_mode", "n_from", "n_to", "rise"])


def equivalent(curve: dict, error: float, n_used: int) -> dict:
    """TS-equivalent size and data saving of one error, with its status (see the module docstring).

    ``curve`` maps training size to mean TS error (at least two sizes).
    Returns ``ts_equivalent_n`` (NaN when censored), ``saving`` (NaN when
    censored), ``bound`` (the grid size that bounds ``n_TS`` when censored,
    else ``n_TS``), ``saving_bound`` (the bound on the saving when censored,
    else the saving) and ``status``.
    """
    if not math.isfinite(error):
        raise ParameterError(f"cannot place a non-finite error {error!r} on the TS curve")
    sizes = sorted(curve)
    first = curve[sizes[0]]  # the running minimum starts here
    if error > first:
        bound = float(sizes[0])
        return {"ts_equivalent_n": math.nan, "saving": math.nan, "bound": bound,
                "saving_bound": 1.0 - n_used / bound, "status": BELOW}
    out = metrics.data_saving(curve, error, n_used)
    if out["censored"]:
        bound = float(sizes[-1])
        return {"ts_equivalent_n": math.nan, "saving": math.nan, "bound": bound,
                "saving_bound": out["saving"], "status": BEYOND}
    return {"ts_equivalent_n": out["ts_equivalent_n"], "saving": out["saving"], "bound": out["ts_equivalent_n"],
            "saving_bound": out["saving"], "status": WITHIN}


def equivalent_sizes(method_res: pd.DataFrame, ts_res: pd.DataFrame, metric: str = "jsd_mean") -> pd.DataFrame:
    """Each method's error at each training size, its TS-equivalent size and data saving.

    ``method_res``: :func:`run_sizes` rows of the methods; ``ts_res``:
    :func:`run_sizes` rows of the TS grid.  For each (truth mode, method, n)
    the error is averaged over the method's seeds per question, then over
    its questions; the TS curve is built from the same questions (all TS grid
    seeds).  One row per (truth_mode, method, n).  The ``floor`` rows (the
    truth's own noise, no method) get a TS-equivalent size (how large a TS
    sample would be as close to the truth as the truth's bootstrap) but no
    saving.
    """
    check_metric(metric)
    res = method_res
    if res.empty:
        raise ParameterError("no method results to compare with the TS curve")
    rows = []
    for (mode, method, n), grp in res.groupby(["truth_mode", "method", "n"], sort=False):
        qs = sorted(grp.question.unique())
        missing = set(qs) - set(ts_res[(ts_res.truth_mode == mode) & (ts_res.method == "TS")].question)
        if missing:
            raise ParameterError(f"the TS grid has no results for question(s) {sorted(missing)} ({mode} truth)")
        curve_df = ts_curve(ts_res[ts_res.truth_mode == mode], metric, qs)
        if len(curve_df) < 2:
            raise ParameterError("the TS curve needs two or more training sizes")
        curve = dict(zip(curve_df.n.astype(int), curve_df.error))
        summary = _question_means(grp, metric, []).iloc[0]
        row = {"truth_mode": mode, "method": method, "n": int(n), "error": float(summary.error),
               "seed_sd": float(summary.seed_sd), "samples": int(summary.samples), "questions": ", ".join(qs),
               "ts_grid": f"{min(curve)}-{max(curve)} ({len(curve)} sizes)"}
        row.update(equivalent(curve, float(summary.error), int(n)))
        if method == "floor":
            row["saving"] = row["saving_bound"] = math.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    rank = {m: i for i, m in enumerate(list(method_registry.ALL) + ["floor"])}
    out["_r"] = out.method.map(lambda m: rank.get(m, len(rank)))
    return out.sort_values(["truth_mode", "n", "_r"]).drop(columns="_r").reset_index(drop=True)


def describe_equivalent(row) -> tuple[str, str]:
    """Readable TS-equivalent size and saving of a row of :func:`equivalent_sizes` (bounds marked)."""
    saving = row["saving_bound"]
    pct = (lambda prefix: "not applicable" if not np.isfinite(saving)
           else f"{prefix}{100 * saving:.1f}%".replace("-", "−"))
    if row["status"] == WITHIN:
        return f"{row['ts_equivalent_n']:,.0f}", pct("")
    if row["status"] == BEYOND:
        return f"> {row['bound']:,.0f}", pct("> ")
    if row["status"] == BELOW:  # a bound such as "< −900%" says nothing useful: the method saves no data
        return f"< {row['bound']:,.0f}", "not applicable" if not np.isfinite(saving) else "none (worse than TS)"
    raise ParameterError(f"unknown status {row['status']!r}")


# --------------------------------------------------------------------------
# Unseen backgrounds: per-subgroup errors by training presence and truth size
# --------------------------------------------------------------------------


def size_bin_labels(edges: Sequence[int]) -> list[str]:
    """Labels of the bins ``[e0, e1), [e1, e2), ..., [e_last, inf)`` (e.g. ``10-19``, ``200+``)."""
    edges = check_edges(edges)
    labels = [f"{a}-{b - 1}" if b - 1 > a else f"{a}" for a, b in zip(edges[:-1], edges[1:])]
    return labels + [f"{edges[-1]}+"]


def check_edges(edges: Sequence[int]) -> list[int]:
    if isinstance(edges, (str, bytes)) or not isinstance(edges, Sequence) or not edges:
        raise ParameterError(f"size_bins must be a non-empty list of increasing bin edges, got {edges!r}")
    bad = [e for e in edges if isinstance(e, bool) or not isinstance(e, (int, np.integer)) or e < 1]
    if bad:
        raise ParameterError(f"size_bins must be positive integers; bad value(s) {bad}")
    if any(b <= a for a, b in zip(edges[:-1], edges[1:])):
        raise ParameterError(f"size_bins must be strictly increasing, got {list(edges)}")
    return [int(e) for e in edges]


def size_bins(n, edges: Sequence[int]) -> pd.Categorical:
    """The bin of each truth size (ordered categorical); sizes below the first edge are NaN."""
    edges = check_edges(edges)
    labels = size_bin_labels(edges)
    return pd.cut(np.asarray(n, dtype=float), bins=edges + [np.inf], right=False, labels=labels)


def with_presence(per: pd.DataFrame) -> pd.DataFrame:
    """Per-subgroup rows of every method with ``train_n`` and ``absent`` (no training respondent).

    ``per``: :func:`dsalib.experiments.load_per_subgroup_modes` output; the
    training size of each subgroup is on the ``floor`` rows (the noise floor
    is stored first for every question and sample).  Also adds ``ts_jsd``
    (TS's error on the same subgroup evaluation, NaN when TS did not run) and
    ``better_than_ts``.
    """
    if per.empty:
        raise ParameterError("no per-subgroup results to analyse")
    keys = list(SUBGROUP_KEYS)
    floor = per[per.method == "floor"]
    if floor.empty or "train_n" not in floor.columns:
        raise ParameterError("the stores hold no noise-floor rows with train_n; rerun the Enhancement protocol")
    presence = floor[keys + ["train_n"]].drop_duplicates(keys)
    body = per.drop(columns=[c for c in ("train_n",) if c in per.columns])
    out = body.merge(presence, on=keys, how="left", validate="many_to_one")
    if out.train_n.isna().any():
        lost = out[out.train_n.isna()][keys].drop_duplicates().head(3).to_dict("records")
        raise ParameterError(f"subgroup evaluations without a noise-floor row (e.g. {lost})")
    out["train_n"] = out.train_n.astype(int)
    out["absent"] = out.train_n == 0
    ts = per[per.method == "TS"][keys + ["jsd"]].rename(columns={"jsd": "ts_jsd"})
    out = out.merge(ts.drop_duplicates(keys), on=keys, how="left")
    out["better_than_ts"] = np.where(out.ts_jsd.notna(), out.jsd < out.ts_jsd, np.nan)
    return out


def subgroup_summary(df: pd.DataFrame, edges: Sequence[int] | None = None, presence: bool = True) -> pd.DataFrame:
    """Per-subgroup JSD summarised per (truth_mode, method[, size_bin][, presence]).

    ``df``: :func:`with_presence` output.  ``edges``: truth-size bin edges
    (:func:`size_bins`), or None for no size bins; ``presence``: split by
    whether the subgroup had respondents in the training sample.  Columns
    ``jsd_mean`` (over subgroup evaluations), ``jsd_median``, ``evaluations``
    (subgroup x question x sample rows), ``subgroups`` (distinct subgroups),
    ``truth_n_median`` and ``better_than_ts`` (share of evaluations below
    TS's error on the same subgroup evaluation; NaN without TS; 0 for TS).
    """
    d = df.copy()
    by = ["truth_mode", "method"]
    if edges is not None:
        d["size_bin"] = size_bins(d["n"], edges)
        by.append("size_bin")
    if presence:
        d["presence"] = np.where(d.absent, "absent from training", "in training")
        by.append("presence")
    out = d.groupby(by, observed=True, as_index=False).agg(
        jsd_mean=("jsd", "mean"), jsd_median=("jsd", "median"), evaluations=("jsd", "size"),
        subgroups=("subgroup", "nunique"), truth_n_median=("n", "median"), better_than_ts=("better_than_ts", "mean"))
    rank = {m: i for i, m in enumerate(list(method_registry.ALL) + ["floor"])}
    out["_r"] = out.method.map(lambda m: rank.get(m, len(rank)))
    return out.sort_values(["truth_mode"] + by[2:] + ["_r"]).drop(columns="_r").reset_index(drop=True)


def absent_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Per truth mode: subgroup evaluations, how many were absent from training, their share and median truth size.

    Counted on the ``floor`` rows of :func:`with_presence` output (one per
    evaluated subgroup of each question and sample).
    """
    floor = df[df.method == "floor"]
    if floor.empty:
        raise ParameterError("no noise-floor rows to count subgroups on")
    rows = []
    for mode, grp in floor.groupby("truth_mode", sort=False):
        ab = grp[grp.absent]
        rows.append({"truth_mode": mode, "evaluations": int(len(grp)), "absent": int(len(ab)),
                     "absent_share": float(len(ab) / len(grp)),
                     "absent_distinct_subgroups": int(ab.subgroup.nunique()),
                     "truth_n_of_absent_median": float(ab.n.median()) if len(ab) else math.nan,
                     "truth_n_of_absent_max": int(ab.n.max()) if len(ab) else 0})
    return pd.DataFrame(rows).set_index("truth_mode")


#: Fewer absent-subgroup evaluations than this are too few to compare methods on; the report says so.
MIN_ABSENT_TO_COMPARE = 30


def absent_sentence(counts: pd.DataFrame, by_presence: pd.DataFrame, mode: str, show: Sequence[str],
                    min_absent: int = MIN_ABSENT_TO_COMPARE) -> str:
    """One short sentence on the absent subgroups of a truth mode, for the report (says so when there are none).

    ``counts``: :func:`absent_counts`; ``by_presence``: :func:`subgroup_summary`
    (with presence); ``show``: the methods to name. With fewer than ``min_absent``
    absent evaluations the sentence says they are too few to compare methods on and
    names no error; otherwise it gives the mean JSD of ``show`` on them (the shares
    better than TS are in the tables).
    """
    row = counts.loc[mode]
    total, absent = int(row.evaluations), int(row.absent)
    if absent == 0:
        return (f"None of the {total:,} subgroup evaluations lacked a training respondent, so at this training size "
                "there is no absent subgroup to compare on.")
    text = (f"{absent:,} of {total:,} subgroup evaluations ({100 * absent / total:.1f}%, "
            f"{int(row.absent_distinct_subgroups)} distinct subgroups, median truth size "
            f"{row.truth_n_of_absent_median:.0f}) had no training respondent")
    if absent < min_absent:
        return text + (f": too few (under {min_absent}) to compare methods on, so the absent rows of the tables "
                       "are shown for completeness only.")
    t = by_presence[(by_presence.truth_mode == mode) & by_presence.presence.str.startswith("absent")]
    t = t.set_index("method")
    named = [m for m in show if m in t.index and m != "floor"]  # the floor is named apart
    errs = ", ".join(f"{m} {t.loc[m, 'jsd_mean']:.3f}" for m in named)
    text += f"; mean JSD on them: {errs}"
    if "floor" in t.index:
        text += f" (noise floor {t.loc['floor', 'jsd_mean']:.3f})"
    return text + "."


def ordered_by_size(df: pd.DataFrame, truth_mode: str, question: str, seed: int) -> pd.DataFrame:
    """One question and sample's per-subgroup rows with ``rank`` (0 = smallest truth subgroup, ties by name)."""
    d = df[(df.truth_mode == truth_mode) & (df.question == question) & (df.seed == seed)]
    if d.empty:
        raise ParameterError(f"no per-subgroup results for question '{question}', seed {seed}, {truth_mode} truth")
    order = d[["subgroup", "n"]].drop_duplicates("subgroup").sort_values(["n", "subgroup"]).reset_index(drop=True)
    order["rank"] = np.arange(len(order))
    return d.merge(order[["subgroup", "rank"]], on="subgroup").sort_values(["method", "rank"]).reset_index(drop=True)
