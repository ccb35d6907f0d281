"""Metrics: JSD, Wasserstein-1, KL, their averages, the better-than-TS share, data savings.

The rules (also in :data:`METRIC_RULES`, which every run writes to its outputs):

- JSD is the Jensen-Shannon *divergence* (not its square root), natural log,
  so it lies in ``[0, ln 2]``.
- WD is the Wasserstein-1 distance between the two distributions placed at the
  options' ordinal positions ``0..K-1``: ``sum_i |F_p(i) - F_q(i)|`` (the CDF
  L1 formula).  ``wd`` is on that raw scale; ``wd_scaled`` divides by
  ``K - 1`` (the position range) so it lies in ``[0, 1]``.  (Passing the
  probability vectors to ``scipy.stats.wasserstein_distance`` as *values*
  ignores the option order; that is wrong and is tested against.)
- KL(p || q) uses natural log with ``0 log 0 = 0``; it is infinite where q has
  no mass on an option p uses.
- Averages over subgroups are given both unweighted (``*_mean``) and weighted
  by the truth subgroup's respondent count (``*_wmean``).  Only subgroups with
  at least ``min_size`` respondents in the truth are evaluated.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import DsaError

METRIC_RULES = {
    "jsd": "Jensen-Shannon divergence, natural log, range [0, ln 2]",
    "wd": "Wasserstein-1 on option positions 0..K-1 (CDF L1), raw option units",
    "wd_scaled": "wd divided by K-1, range [0, 1]",
    "kl": "KL(p||q), natural log",
    "mean": "unweighted mean over evaluated subgroups",
    "wmean": "mean over evaluated subgroups weighted by truth respondent count",
}


#: How far a distribution's row sum may be from 1 (float32 softmax outputs stay well within it).
SUM_TOLERANCE = 1e-6


def _as_2d(p) -> np.ndarray:
    a = np.asarray(p, dtype=float)
    return a[None, :] if a.ndim == 1 else a


def _check_pair(p: np.ndarray, q: np.ndarray) -> None:
    if p.ndim != 2 or p.shape[1] < 2:
        raise DsaError(f"distributions must be vectors or (rows × options) arrays with ≥ 2 options, got shape {p.shape}")
    if p.shape != q.shape:
        raise DsaError(f"distributions have different shapes {p.shape} and {q.shape}")
    if not (np.isfinite(p).all() and np.isfinite(q).all()):
        raise DsaError("distributions contain NaN or infinite values")
    if (p < -1e-12).any() or (q < -1e-12).any():
        raise DsaError("distributions contain negative probabilities")
    for name, a in (("p", p), ("q", q)):
        sums = a.sum(axis=1)
        bad = np.flatnonzero(np.abs(sums - 1.0) > SUM_TOLERANCE)
        if bad.size:
            raise DsaError(
                f"distribution {name} row {int(bad[0])} sums to {sums[bad[0]]:.6g}, not 1 (tolerance {SUM_TOLERANCE:g}); "
                "pass probabilities (e.g. counts / counts.sum(axis=1, keepdims=True)), not counts"
            )


def _xlogy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    m = x > 0
    out[m] = x[m] * np.log(y[m])
    return out


def kl(p, q) -> np.ndarray:
    """KL(p || q) per row, natural log."""
    p, q = _as_2d(p), _as_2d(q)
    _check_pair(p, q)
    with np.errstate(divide="ignore"):
        out = (_xlogy(p, p) - _xlogy(p, q)).sum(axis=1)
    out[((p > 0) & (q <= 0)).any(axis=1)] = np.inf
    return out


def jsd(p, q) -> np.ndarray:
    """Jensen-Shannon divergence per row (natural log, in [0, ln 2])."""
    p, q = _as_2d(p), _as_2d(q)
    _check_pair(p, q)
    # p log(p / m) with m = (p + q) / 2 written as p (log 2p - log(p + q)): halving a subnormal probability
    # underflows to 0 (m = 0 where p > 0 would give ln 2 for nearly equal rows), doubling and p + q do not;
    # identical rows give exactly 0
    s = p + q
    val = 0.5 * (_xlogy(p, 2 * p) - _xlogy(p, s)).sum(axis=1) + 0.5 * (_xlogy(q, 2 * q) - _xlogy(q, s)).sum(axis=1)
    return np.clip(val, 0.0, np.log(2))


def wd(p, q, positions: Sequence[float] | None = None) -> np.ndarray:
    """Wasserstein-1 per row between p and q placed at ``positions`` (default 0..K-1)."""
    p, q = _as_2d(p), _as_2d(q)
    _check_pair(p, q)
    k = p.shape[1]
    pos = np.arange(k, dtype=float) if positions is None else np.asarray(positions, dtype=float)
    if pos.shape != (k,) or (np.diff(pos) <= 0).any():
        raise DsaError(f"positions must be {k} increasing numbers, got {positions!r}")
    cdf_gap = np.abs(np.cumsum(p, axis=1) - np.cumsum(q, axis=1))[:, :-1]
    return (cdf_gap * np.diff(pos)).sum(axis=1)


def wd_scaled(p, q, positions: Sequence[float] | None = None) -> np.ndarray:
    """``wd`` divided by the position range (K-1 for the default positions)."""
    k = _as_2d(p).shape[1]
    pos = np.arange(k, dtype=float) if positions is None else np.asarray(positions, dtype=float)
    return wd(p, q, pos) / (pos[-1] - pos[0])


def evaluate(pred: np.ndarray, truth, min_size: int = 10) -> pd.DataFrame:
    """Per-subgroup errors of ``pred`` (rows aligned with ``truth.keys``).

    ``truth`` is a :class:`dsalib.surveys.SubgroupTable`.  Returns one row per
    evaluated subgroup (truth size ≥ ``min_size``) with columns ``subgroup``,
    ``n``, ``jsd``, ``wd``, ``wd_scaled``.
    """
    pred = np.asarray(pred, dtype=float)
    if pred.shape != truth.counts.shape:
        raise DsaError(
            f"predictions have shape {pred.shape} but the truth table has "
            f"{truth.counts.shape} (subgroups × options)"
        )
    sums = pred.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=SUM_TOLERANCE):
        worst = int(np.argmax(np.abs(sums - 1)))
        raise DsaError(f"prediction row {worst} sums to {sums[worst]:.6f}, not 1")
    keep = truth.n >= min_size
    if not keep.any():
        raise DsaError(
            f"no subgroup of '{truth.question}' has ≥ {min_size} respondents in the truth; "
            "lower min_size or use fewer background attributes"
        )
    t = truth.dist[keep]
    p = pred[keep]
    return pd.DataFrame(
        {
            "subgroup": np.array(truth.subgroup_labels(), dtype=object)[keep],
            "n": truth.n[keep],
            "jsd": jsd(p, t),
            "wd": wd(p, t),
            "wd_scaled": wd_scaled(p, t),
        }
    )


def summarize(per_subgroup: pd.DataFrame, metrics: Sequence[str] = ("jsd", "wd", "wd_scaled")) -> dict:
    """Unweighted (``<m>_mean``) and size-weighted (``<m>_wmean``) averages."""
    out = {"subgroups": int(len(per_subgroup))}
    w = per_subgroup["n"].to_numpy(dtype=float)
    for m in metrics:
        v = per_subgroup[m].to_numpy(dtype=float)
        out[f"{m}_mean"] = float(v.mean())
        out[f"{m}_wmean"] = float((v * w).sum() / w.sum())
    return out


def better_share(method_err, reference_err) -> float:
    """Share of subgroups where the method's error is strictly below the reference's (paper Table 3)."""
    a = np.asarray(method_err, dtype=float)
    b = np.asarray(reference_err, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise DsaError("better_share needs two non-empty error arrays of the same length")
    return float((a < b).mean())


def ts_equivalent_size(ts_curve: Mapping[int, float], error: float) -> float:
    """The TS training size whose error equals ``error`` (linear interpolation on the grid).

    ``ts_curve`` maps training size → mean TS error.  The curve is made
    monotone (running minimum) before interpolating.  Returns ``inf`` when the
    error is below the TS error at the largest size on the grid (the saving is
    then only bounded below), and the smallest size when it is above the TS
    error there.
    """
    if len(ts_curve) < 2:
        raise DsaError("the TS curve needs errors at two or more training sizes")
    sizes = np.array(sorted(ts_curve), dtype=float)
    errs = np.minimum.accumulate(np.array([ts_curve[int(s)] for s in sizes], dtype=float))
    if error < errs[-1]:
        return float("inf")
    if error >= errs[0]:
        return float(sizes[0])
    # errs is non-increasing; find the segment that brackets `error`
    j = int(np.flatnonzero(errs <= error)[0])
    e0, e1 = errs[j - 1], errs[j]
    s0, s1 = sizes[j - 1], sizes[j]
    if e0 == e1:
        return float(s0)
    return float(s0 + (e0 - error) / (e0 - e1) * (s1 - s0))


def data_saving(ts_curve: Mapping[int, float], error: float, n_used: int) -> dict:
    """Data saving of a method trained on ``n_used`` respondents whose error is ``error``.

    ``saving = 1 - n_used / n_TS`` where ``n_TS`` is :func:`ts_equivalent_size`.
    ``censored`` is true when ``n_TS`` lies beyond the grid (the saving is then
    at least ``1 - n_used / max(grid)``, which is reported).
    """
    n_ts = ts_equivalent_size(ts_curve, error)
    censored = not np.isfinite(n_ts)
    bound = float(max(ts_curve)) if censored else n_ts
    return {
        "ts_equivalent_n": n_ts,
        "saving": 1.0 - n_used / bound,
        "censored": censored,
    }
