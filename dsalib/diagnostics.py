"""Diagnostics of a method's predictions beyond its error: how much they tell subgroups apart.

- :func:`spread`: the spread of a set of subgroup distributions, the mean JSD
  of each subgroup's distribution to their size-weighted mean distribution.
  A method that predicts the same distribution for every subgroup has spread
  0; the truth's spread says how much subgroups really differ.
- :func:`spread_table`: for each method (and truth mode), the spread of its
  predictions beside the truth's spread over the same subgroups, from a
  study's per-subgroup result rows.

Definition: with subgroup distributions ``p_g`` and weights ``w_g`` (truth
sizes), ``p̄ = Σ_g w_g p_g / Σ_g w_g`` and ``spread = (1/G) Σ_g JSD(p_g, p̄)``,
JSD as in :mod:`dsalib.metrics` (natural log, so ``0 ≤ spread ≤ ln 2``).  The
weights set the centre only; the average over subgroups is unweighted, like
``jsd_mean``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from . import metrics
from .errors import DsaError

#: The columns that identify one split (one training sample scored against one truth) in per-subgroup rows.
SPLIT_COLUMNS = ("study", "dataset", "question", "seed", "truth_mode")


def spread(dist, weights=None) -> float:
    """Mean JSD of each row of ``dist`` (G, K) to the ``weights``-weighted mean row (see the module docstring).

    ``weights``: one non-negative number per row with a positive total
    (default: equal weights); only their ratios matter.
    """
    p = np.asarray(dist, dtype=float)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise DsaError(f"dist must be a (subgroups, options) array with at least one row and two options, "
                       f"got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise DsaError("dist holds NaN, infinite or negative probabilities")
    sums = p.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-6):
        worst = int(np.argmax(np.abs(sums - 1)))
        raise DsaError(f"row {worst} of dist sums to {sums[worst]:.6f}, not 1")
    w = np.ones(len(p)) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (len(p),):
        raise DsaError(f"weights must hold one number per row of dist ({len(p)}), got shape {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise DsaError("weights must be finite, non-negative and not all zero")
    centre = (w / w.sum()) @ p
    return float(metrics.jsd(p, np.broadcast_to(centre, p.shape)).mean())


def _dist_columns(df: pd.DataFrame, prefix: str) -> list[str]:
    cols = [c for c in df.columns if c.startswith(prefix + "_") and c[len(prefix) + 1:].isdigit()]
    return sorted(cols, key=lambda c: int(c[len(prefix) + 1:]))


def _rows_dist(df: pd.DataFrame, prefix: str) -> np.ndarray:
    """The distributions in ``<prefix>_0..`` columns; columns empty in every row (another question's K) dropped."""
    cols = [c for c in _dist_columns(df, prefix) if df[c].notna().any()]
    return df[cols].to_numpy(dtype=float)


def spread_table(per_subgroup: pd.DataFrame, by: Sequence[str] = ("truth_mode",)) -> pd.DataFrame:
    """Spread of each method's predictions beside the truth's, mean over splits, one row per (``by``, method).

    ``per_subgroup``: per-subgroup result rows as stored by
    :func:`dsalib.experiments.run_enhancement` (e.g.
    :func:`dsalib.experiments.load_per_subgroup_modes`): the split columns
    (:data:`SPLIT_COLUMNS`, those present), ``method``, the truth size ``n``,
    the predictions ``pred_0..`` on each method's rows and the truth
    ``truth_0..`` on the ``floor`` rows.  For each split and method,
    ``spread`` is :func:`spread` of the predictions and ``truth_spread`` that
    of the truth over the same subgroups, both weighted by ``n``; the table
    gives their means over splits (``splits`` counts them) and their ratio.
    ``by``: grouping columns kept apart (those absent are ignored).
    """
    need = {"method", "n"}
    missing = need - set(per_subgroup.columns)
    if missing:
        raise DsaError(f"per-subgroup rows lack the column(s) {sorted(missing)}; pass rows as the result stores "
                       "save them (see dsalib.experiments.load_per_subgroup_modes)")
    if not _dist_columns(per_subgroup, "pred") or not _dist_columns(per_subgroup, "truth"):
        raise DsaError("per-subgroup rows need pred_0.. columns (method rows) and truth_0.. columns (floor rows); "
                       "these come from dsalib.experiments.run_enhancement's stores")
    split_cols = [c for c in SPLIT_COLUMNS if c in per_subgroup.columns]
    by = [c for c in by if c in per_subgroup.columns]
    records = []
    groups = per_subgroup.groupby(split_cols, sort=False, dropna=False) if split_cols else [((), per_subgroup)]
    for key, split in groups:
        key = key if isinstance(key, tuple) else (key,)
        floor = split[split["method"] == "floor"]
        if floor.empty:
            raise DsaError(f"split {dict(zip(split_cols, key))} has no 'floor' rows, which carry the truth "
                           "distributions; load the floor rows with the methods")
        truth = floor.set_index("subgroup") if "subgroup" in floor else None
        for method, rows in split[split["method"] != "floor"].groupby("method", sort=False):
            if truth is not None:
                t = truth.loc[rows["subgroup"]]
                truth_dist, truth_n = _rows_dist(t, "truth"), t["n"].to_numpy(dtype=float)
            else:
                truth_dist, truth_n = _rows_dist(floor, "truth"), floor["n"].to_numpy(dtype=float)
            w = rows["n"].to_numpy(dtype=float)
            records.append({**dict(zip(split_cols, key)), "method": method,
                            "spread": spread(_rows_dist(rows, "pred"), w),
                            "truth_spread": spread(truth_dist, truth_n)})
    df = pd.DataFrame(records)
    out = df.groupby(by + ["method"], sort=False).agg(spread=("spread", "mean"), truth_spread=("truth_spread", "mean"),
                                                       splits=("spread", "size"))
    out["ratio"] = out["spread"] / out["truth_spread"]
    return out
