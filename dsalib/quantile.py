"""Quantile mapping on a discrete ordinal scale (DSA Phase 2, paper section 2.3).

The DSA method describes how a single background change ``u → v`` of attribute
``k`` moves an answer distribution by the shift of its quantile function, pooled
over every pair of subgroups that differ only in that attribute.  Options are
discrete, so quantiles need a *continuous reading* of a distribution.  The
choices made here (tested in ``tests/test_quantile.py``):

Continuous reading
    Option ``i`` (position ``i`` of ``0..K-1``) is the interval
    ``[i - 0.5, i + 0.5)`` and its probability is spread uniformly over it.
    The CDF ``F_p`` is piecewise linear with knots at ``-0.5, 0.5, ..., K-0.5``;
    the quantile function ``Q_p = F_p^{-1}`` is its inverse (options with zero
    mass are skipped, so ``Q_p`` jumps over them).  A degenerate distribution
    (all mass on option ``i``) reads as the uniform on ``[i - 0.5, i + 0.5)``.

Levels
    Quantiles are taken on a grid of ``M`` levels at the slice midpoints
    ``τ_j = (j + 0.5) / M`` (default ``M = 100``: 0.5 %, 1.5 %, ..., 99.5 %).
    Level ``τ_j`` stands for the slice ``[j/M, (j+1)/M)`` of probability mass.

Shift and operator
    ``shift(p_from, p_to)`` is ``d(τ_j) = Q_to(τ_j) - Q_from(τ_j)``.  The operator
    ``T_{k:u→v}`` is the (optionally weighted) mean shift ``d̄(τ_j)`` over *all*
    pairs with that attribute change; the reverse operator ``v → u`` is ``-d̄``.

Applying an operator
    ``apply(p)`` moves every point of slice ``j`` of ``p``'s quantile function by
    ``d̄(τ_j)`` (a shift that is constant within a slice), clips the result to
    the scale's range ``[-0.5, K - 0.5]`` (mass pushed past an end lands on the
    end option) and bins it back to the options.  The binning is *exact*:
    the mass that slice ``j`` puts on option ``i`` is the length of
    ``[j/M, (j+1)/M) ∩ [F_p(i - 0.5 - d̄_j), F_p(i + 0.5 - d̄_j))`` (with the
    outer edges at ±∞).  Consequences:

    - the output is always a distribution (non-negative, sums to 1 up to
      floating-point rounding, ~1e-15);
    - the identity operator (``d̄ = 0``) returns its input exactly, for any
      ``M``;
    - an integer shift of a distribution that stays inside the scale moves it
      by whole options exactly; a non-integer location shift ``s`` of a wide
      distribution moves its mean by ``s`` up to binning and end clipping;
    - with the operator estimated from a single pair ``(p_from, p_to)``,
      ``apply(p_from)`` equals ``p_to`` up to a binning error: the shift is
      constant within a slice whereas the exact one varies within it.  The
      error is largest where ``Q_from`` is steep (an option of ``p_from`` with
      little mass): the L1 error stays below
      ``(K-1) / (2 M min(p_from)) + 2 (K-1) / M`` (tested; for typical
      11-option distributions and ``M = 100`` it is ~0.01-0.03).

Everything here is numpy; Phase 2 applies operators to *detached* reference
predictions, so no gradient is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable

import numpy as np
import pandas as pd

from .errors import DsaError

#: Default number of quantile levels (slice midpoints 0.5 %, 1.5 %, ..., 99.5 %).
DEFAULT_N_LEVELS = 100


def quantile_levels(n_levels: int = DEFAULT_N_LEVELS) -> np.ndarray:
    """Slice midpoints ``(j + 0.5) / n_levels`` for ``j = 0..n_levels-1``."""
    if isinstance(n_levels, bool) or not isinstance(n_levels, (int, np.integer)) or n_levels < 1:
        raise DsaError(f"n_levels must be a positive integer, got {n_levels!r}")
    return (np.arange(n_levels) + 0.5) / n_levels


def _check_levels(levels) -> np.ndarray:
    if levels is None:
        return quantile_levels()
    if isinstance(levels, (int, np.integer)) and not isinstance(levels, bool):
        return quantile_levels(int(levels))
    tau = np.asarray(levels, dtype=float)
    if tau.ndim != 1 or tau.size == 0 or not np.isfinite(tau).all():
        raise DsaError("levels must be a non-empty 1-D array of quantile levels in (0, 1)")
    if (tau <= 0).any() or (tau >= 1).any() or (np.diff(tau) <= 0).any():
        raise DsaError("levels must be strictly increasing and lie strictly between 0 and 1")
    return tau


def _slice_bounds(tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The probability slice each level stands for: boundaries halfway between levels, ends 0 and 1."""
    mid = 0.5 * (tau[1:] + tau[:-1])
    lo = np.concatenate(([0.0], mid))
    hi = np.concatenate((mid, [1.0]))
    return lo, hi


def _check_dist(p, name: str = "p") -> np.ndarray:
    """A (G, K) float array of distributions (1-D input becomes one row), rows renormalised."""
    a = np.asarray(p, dtype=float)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] < 2:
        raise DsaError(f"{name} must be a distribution over ≥ 2 options (shape (K,) or (G, K)), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise DsaError(f"{name} contains NaN or infinite values")
    if (a < -1e-12).any():
        raise DsaError(f"{name} contains negative probabilities")
    a = np.clip(a, 0.0, None)
    s = a.sum(axis=1, keepdims=True)
    if (s <= 0).any():
        raise DsaError(f"{name} has a row with no probability mass")
    return a / s


def cdf(p, x) -> np.ndarray:
    """The continuous-reading CDF ``F_p(x)`` (piecewise linear; 0 below -0.5, 1 from K-0.5).

    ``p``: (K,) or (G, K); ``x``: (G, n) or (n,) points.  Returns (G, n).
    """
    p = _check_dist(p)
    return _cdf(p, np.asarray(x, dtype=float))


def _cdf(p: np.ndarray, x: np.ndarray) -> np.ndarray:
    g, k = p.shape
    x = np.broadcast_to(x, (g,) + x.shape[-1:]) if x.ndim == 1 else x
    cum = np.concatenate((np.zeros((g, 1)), np.cumsum(p, axis=1)), axis=1)
    cum[:, -1] = 1.0
    pos = np.clip(x + 0.5, 0.0, float(k))  # position in option units from the left edge
    i = np.minimum(np.floor(pos).astype(np.int64), k - 1)  # option interval x falls in
    frac = pos - i
    rows = np.arange(g)[:, None]
    return cum[rows, i] + p[rows, i] * frac


def quantile_function(p, levels=None) -> np.ndarray:
    """``Q_p(τ)`` of the continuous reading at ``levels`` (default :func:`quantile_levels`).

    ``p``: (K,) or (G, K).  Returns (G, M) values in ``[-0.5, K - 0.5]``.
    """
    p = _check_dist(p)
    return _quantiles(p, _check_levels(levels))


def _quantiles(p: np.ndarray, tau: np.ndarray) -> np.ndarray:
    g, k = p.shape
    cum = np.cumsum(p, axis=1)
    cum[:, -1] = 1.0
    # first option whose cumulative mass exceeds τ: it has positive mass
    idx = (cum[:, None, :] <= tau[None, :, None]).sum(axis=2)
    idx = np.minimum(idx, k - 1)
    rows = np.arange(g)[:, None]
    before = np.where(idx > 0, cum[rows, np.maximum(idx - 1, 0)], 0.0)
    mass = p[rows, idx]
    frac = np.where(mass > 0, (tau[None, :] - before) / np.where(mass > 0, mass, 1.0), 0.5)
    return np.clip(idx - 0.5 + np.clip(frac, 0.0, 1.0), -0.5, k - 0.5)


def shift(p_from, p_to, levels=None) -> np.ndarray:
    """``d(τ) = Q_to(τ) - Q_from(τ)`` at ``levels``; (M,) for 1-D inputs, else (G, M)."""
    tau = _check_levels(levels)
    a = _check_dist(p_from, "p_from")
    b = _check_dist(p_to, "p_to")
    if a.shape != b.shape:
        raise DsaError(f"p_from and p_to have different shapes {a.shape} and {b.shape}")
    d = _quantiles(b, tau) - _quantiles(a, tau)
    return d[0] if np.ndim(p_from) == 1 and np.ndim(p_to) == 1 else d


def apply_shift(p, d, levels=None) -> np.ndarray:
    """Shift ``p``'s quantile function by ``d(τ)`` per level slice, clip to the scale and bin back.

    See the module docstring for the exact binning.  ``p``: (K,) or (G, K);
    ``d``: (M,) (one shift for every row) or (G, M).  Returns the same shape as ``p``.
    """
    tau = _check_levels(levels)
    one = np.ndim(p) == 1
    q = _check_dist(p)
    d = np.asarray(d, dtype=float)
    if d.ndim == 1:
        d = np.broadcast_to(d, (q.shape[0], d.size))
    if d.ndim != 2 or d.shape != (q.shape[0], tau.size):
        raise DsaError(f"shift must have shape ({tau.size},) or ({q.shape[0]}, {tau.size}), got {np.shape(d)}")
    if not np.isfinite(d).all():
        raise DsaError("shift contains NaN or infinite values")
    out = _bin_shifted(q, d, tau)
    return out[0] if one else out


def _bin_shifted(p: np.ndarray, d: np.ndarray, tau: np.ndarray) -> np.ndarray:
    g, k = p.shape
    m = tau.size
    lo, hi = _slice_bounds(tau)
    # inner option edges 0.5 .. K-1.5 pulled back through the shift: (G, M, K-1)
    edges = np.arange(k - 1) + 0.5
    back = edges[None, None, :] - d[:, :, None]
    f = _cdf(p, back.reshape(g, m * (k - 1))).reshape(g, m, k - 1)
    t = np.clip(f, lo[None, :, None], hi[None, :, None])
    bounds = np.concatenate(
        (np.broadcast_to(lo[None, :, None], (g, m, 1)), t, np.broadcast_to(hi[None, :, None], (g, m, 1))),
        axis=2,
    )
    mass = np.diff(bounds, axis=2).sum(axis=1)
    mass = np.clip(mass, 0.0, None)
    return mass / mass.sum(axis=1, keepdims=True)


@dataclass
class QuantileOperator:
    """A quantile-mapping operator ``T_{k:u→v}``: the pooled mean quantile shift.

    ``shift[j]`` is the mean of ``Q_to(τ_j) - Q_from(τ_j)`` over the pairs it was
    estimated from.  ``attribute``, ``level_from`` and ``level_to`` name the
    change (informational; ``None`` for an operator built by hand).
    """

    shift: np.ndarray
    levels: np.ndarray = field(default_factory=quantile_levels)
    attribute: Hashable | None = None
    level_from: int | None = None
    level_to: int | None = None
    n_pairs: int = 0

    def __post_init__(self) -> None:
        self.levels = _check_levels(self.levels)
        self.shift = np.asarray(self.shift, dtype=float)
        if self.shift.shape != self.levels.shape:
            raise DsaError(f"shift has shape {self.shift.shape}, levels {self.levels.shape}: they must match")
        if not np.isfinite(self.shift).all():
            raise DsaError("shift contains NaN or infinite values")

    @classmethod
    def identity(cls, levels=None) -> "QuantileOperator":
        tau = _check_levels(levels)
        return cls(np.zeros_like(tau), tau)

    @classmethod
    def estimate(cls, p_from, p_to, weights=None, levels=None, attribute=None,
                 level_from=None, level_to=None) -> "QuantileOperator":
        """Pool pairs ``(p_from[i], p_to[i])`` into one operator (weighted mean shift)."""
        tau = _check_levels(levels)
        d = np.atleast_2d(shift(p_from, p_to, tau))
        w = _check_weights(weights, len(d))
        return cls((w[:, None] * d).sum(axis=0) / w.sum(), tau, attribute, level_from, level_to, len(d))

    def inverse(self) -> "QuantileOperator":
        """The operator for the reverse change (shift negated)."""
        return QuantileOperator(-self.shift, self.levels, self.attribute, self.level_to, self.level_from, self.n_pairs)

    def apply(self, p) -> np.ndarray:
        """Map distribution(s) ``p`` ((K,) or (G, K)); see :func:`apply_shift`."""
        return apply_shift(p, self.shift, self.levels)

    __call__ = apply

    @property
    def mean_shift(self) -> float:
        """The average shift over levels (in option units)."""
        return float(self.shift.mean())


@dataclass
class RatioOperator:
    """The ratio (log-odds) operator of Theorem 1: ``T(p) = Normalize(p · exp(r))``.

    ``log_ratio[c]`` is the (optionally weighted) mean of
    ``log p_to(c) - log p_from(c)`` over the pairs it was estimated from.  When
    ``P(C | b) ∝ Π_k φ_k(C, b_k)`` (the paper's Theorem 1), the log ratio of a
    single-attribute change is the same for every setting of the other
    attributes up to a constant, so this operator transfers the change
    exactly; a quantile shift does not (``notebooks/theorem.py``).
    Predictions are clipped at ``1e-12`` before the log.
    """

    log_ratio: np.ndarray
    attribute: Hashable | None = None
    level_from: int | None = None
    level_to: int | None = None
    n_pairs: int = 0

    def __post_init__(self) -> None:
        self.log_ratio = np.asarray(self.log_ratio, dtype=float)
        if self.log_ratio.ndim != 1 or not np.isfinite(self.log_ratio).all():
            raise DsaError("log_ratio must be a finite 1-D array (one entry per option)")

    def inverse(self) -> "RatioOperator":
        return RatioOperator(-self.log_ratio, self.attribute, self.level_to, self.level_from, self.n_pairs)

    def apply(self, p) -> np.ndarray:
        one = np.ndim(p) == 1
        q = _check_dist(p)
        if q.shape[1] != self.log_ratio.size:
            raise DsaError(f"the operator has {self.log_ratio.size} options, p has {q.shape[1]}")
        z = np.log(np.clip(q, RATIO_FLOOR, None)) + self.log_ratio
        z = np.exp(z - z.max(axis=1, keepdims=True)) * (q > 0)
        out = z / z.sum(axis=1, keepdims=True)
        return out[0] if one else out

    __call__ = apply


#: Kinds of operator :func:`estimate_operators` builds.
OPERATORS = ("quantile", "ratio")
#: Probabilities are clipped here before a log ratio is taken.
RATIO_FLOOR = 1e-12


def _check_weights(weights, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=float).reshape(-1)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise DsaError(f"weights must be {n} non-negative finite numbers with a positive sum")
    return w


def estimate_operators(pred, keys, pairs: pd.DataFrame, levels=None, weights=None, kind: str = "quantile") -> dict:
    """One operator per single-attribute change, pooled over all pairs that make it.

    ``kind``: ``"quantile"`` (:class:`QuantileOperator`, the paper's quantile
    mapping) or ``"ratio"`` (:class:`RatioOperator`, Theorem 1's transfer).

    ``pred``: (G, K) predicted distributions; ``keys``: (G, m) level indices of
    the same rows; ``pairs``: a frame like :func:`dsalib.surveys.hamming1_pairs`
    (columns ``a``, ``b`` = rows of ``pred``, ``attribute`` = index of the
    attribute that differs, ``level_a``, ``level_b``).  ``weights``: optional
    per-pair weights (array aligned with ``pairs`` or the name of one of its
    columns); default every pair counts once.

    Returns ``{(attribute, u, v): QuantileOperator}`` for both directions
    ``u → v`` and ``v → u`` of every change present in ``pairs``.
    """
    if kind not in OPERATORS:
        raise DsaError(f"operator kind must be one of {OPERATORS}, got {kind!r}")
    tau = _check_levels(levels)
    pred = _check_dist(pred, "pred")
    keys = np.asarray(keys)
    if keys.ndim != 2 or len(keys) != len(pred):
        raise DsaError(f"keys must have shape ({len(pred)}, attributes), got {keys.shape}")
    need = {"a", "b", "attribute", "level_a", "level_b"}
    if not isinstance(pairs, pd.DataFrame) or not need <= set(pairs.columns):
        raise DsaError(f"pairs must be a DataFrame with columns {sorted(need)} (see surveys.hamming1_pairs)")
    if isinstance(weights, str):
        if weights not in pairs.columns:
            raise DsaError(f"pairs has no weight column '{weights}'")
        weights = pairs[weights].to_numpy(dtype=float)
    w = _check_weights(weights, len(pairs))
    if len(pairs) == 0:
        return {}
    a = pairs["a"].to_numpy(dtype=np.int64)
    b = pairs["b"].to_numpy(dtype=np.int64)
    attr = pairs["attribute"].to_numpy(dtype=np.int64)
    la = pairs["level_a"].to_numpy(dtype=np.int64)
    lb = pairs["level_b"].to_numpy(dtype=np.int64)
    g = len(pred)
    if min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= g:
        raise DsaError(f"pairs refer to rows outside 0..{g - 1} of pred")
    if attr.min() < 0 or attr.max() >= keys.shape[1]:
        raise DsaError(f"pairs refer to an attribute outside 0..{keys.shape[1] - 1}")
    diff = keys[a] != keys[b]
    rows = np.arange(len(pairs))
    if (diff.sum(axis=1) != 1).any() or not diff[rows, attr].all():
        bad = int(np.flatnonzero((diff.sum(axis=1) != 1) | ~diff[rows, attr])[0])
        raise DsaError(f"pair {bad} (rows {a[bad]}, {b[bad]}) does not differ in exactly attribute {attr[bad]}")
    if (keys[a, attr] != la).any() or (keys[b, attr] != lb).any():
        raise DsaError("pairs' level_a/level_b do not match the keys of rows a/b")
    if kind == "quantile":
        d = _quantiles(pred[b], tau) - _quantiles(pred[a], tau)  # a → b
    else:
        logp = np.log(np.clip(pred, RATIO_FLOOR, None))
        d = logp[b] - logp[a]
    out: dict = {}
    groups = pd.DataFrame({"attr": attr, "u": la, "v": lb}).groupby(["attr", "u", "v"]).indices
    sums: dict = {}
    for (j, u, v), idx in groups.items():
        # orient every pair as the lower level → the higher level, then pool
        sign = 1.0 if u < v else -1.0
        key = (int(j), int(min(u, v)), int(max(u, v)))
        s, ws, n = sums.get(key, (np.zeros(d.shape[1]), 0.0, 0))
        sums[key] = (s + sign * (w[idx, None] * d[idx]).sum(axis=0), ws + w[idx].sum(), n + len(idx))
    for (j, u, v), (s, ws, n) in sums.items():
        if ws <= 0:
            continue
        op = QuantileOperator(s / ws, tau, j, u, v, n) if kind == "quantile" else RatioOperator(s / ws, j, u, v, n)
        out[(j, u, v)] = op
        out[(j, v, u)] = op.inverse()
    return out


@dataclass
class ShiftPlan:
    """Phase 2's training pairs and their operators (paper section 2.3).

    ``ref[i]``, ``small[i]``: rows of the training table for pair ``i``; the
    reference is the larger subgroup (the first of the pair on a tie), the
    target row the smaller.  ``attr[i]``: the attribute that differs.
    ``operators``: :func:`estimate_operators` output, keyed ``(attr, u, v)``.
    """

    ref: np.ndarray
    small: np.ndarray
    attr: np.ndarray
    keys: np.ndarray
    operators: dict

    def __len__(self) -> int:
        return len(self.ref)

    def change(self, i: int) -> tuple[int, int, int]:
        """``(attribute, reference level, target level)`` of pair ``i``."""
        k = int(self.attr[i])
        return k, int(self.keys[self.ref[i], k]), int(self.keys[self.small[i], k])

    @property
    def changes(self) -> set:
        """The distinct attribute changes the pairs make."""
        return {self.change(i) for i in range(len(self))}

    def targets(self, p_ref, pairs=None) -> np.ndarray:
        """``T_{k: u→v}(p_ref[j])`` for pairs ``pairs`` (default all; ``p_ref`` aligned with them)."""
        pairs = np.arange(len(self)) if pairs is None else np.asarray(pairs, dtype=np.int64)
        p_ref = _check_dist(p_ref, "p_ref")
        if len(p_ref) != len(pairs):
            raise DsaError(f"p_ref has {len(p_ref)} rows for {len(pairs)} pairs")
        out = np.empty_like(p_ref)
        for j, i in enumerate(pairs):
            out[j] = self.operators[self.change(int(i))].apply(p_ref[j])
        return out


def shift_plan(pred, keys, n, pairs: pd.DataFrame, operator_pairs: pd.DataFrame, levels=None,
               operator_weights: str = "uniform", operator: str = "quantile") -> ShiftPlan:
    """Orient Phase 2's training ``pairs`` (larger subgroup = reference) and estimate the operators.

    ``pred``: (G, K) Phase 1 predictions of the table's rows; ``keys``, ``n``:
    the table's keys and respondent counts; ``pairs`` / ``operator_pairs``:
    :func:`dsalib.surveys.hamming1_pairs` frames (training pairs, and the pairs
    the operators are pooled over).  ``operator_weights``: ``"uniform"`` (every
    pair counts once; the paper's plain pooling) or ``"harmonic"`` (a pair
    counts ``n_a n_b / (n_a + n_b)``, the inverse of the sampling variance of
    a difference of two subgroup estimates, so pairs of tiny subgroups do not
    dominate the pooled shift).  ``operator``: the kind of operator
    (:data:`OPERATORS`; see :func:`estimate_operators`).
    """
    n = np.asarray(n)
    if operator_weights == "uniform" or len(operator_pairs) == 0:
        w = None
    elif operator_weights == "harmonic":
        na = n[operator_pairs["a"].to_numpy(dtype=np.int64)].astype(float)
        nb = n[operator_pairs["b"].to_numpy(dtype=np.int64)].astype(float)
        w = na * nb / np.maximum(na + nb, 1e-12)
    else:
        raise DsaError(f"operator_weights must be 'uniform' or 'harmonic', got {operator_weights!r}")
    operators = estimate_operators(pred, keys, operator_pairs, levels=levels, weights=w, kind=operator)
    a, b = pairs["a"].to_numpy(dtype=np.int64), pairs["b"].to_numpy(dtype=np.int64)
    big_is_a = n[a] >= n[b]
    return ShiftPlan(ref=np.where(big_is_a, a, b), small=np.where(big_is_a, b, a),
                     attr=pairs["attribute"].to_numpy(dtype=np.int64), keys=np.asarray(keys), operators=operators)
