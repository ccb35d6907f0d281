"""Numerical checks of Theorem 1 (DSA paper, appendix F).

Theorem 1 (population-level exact recovery by shift transfer).  If the answer
distribution factorises over the background attributes,
``P(C | b) ∝ Π_k φ_k(C, b_k)`` (a main-effects multinomial logit), then for
any attribute ``x`` with values ``x0, x1`` and any two settings ``d1, d2`` of
the remaining attributes::

    P(C | x1, d2) = Normalize( P(C | x0, d2) · P(C | x1, d1) / P(C | x0, d1) )

This module checks the statement numerically and measures what happens when
its assumptions fail.  Every function is pure and seeded.

Tables
    :func:`random_factorised` draws a full table ``P(C | b)`` on a grid of
    attributes.  ``effects="free"``: ``log φ_k(c, b_k) ~ N(0, scale²)``
    independently for every option and level.  ``effects="ordinal"``: an
    adjacent-category (linear-by-linear) logit, ``log φ_k(c, b_k) = β_k[b_k] · s_c``
    with ``s_c`` the option positions rescaled to ``[-1, 1]``,
    ``β ~ N(0, scale²)``, plus a baseline ``α_c ~ N(0, scale²)``; its effects
    are monotone trends along the scale, closer to what quantile mapping
    assumes.  ``interaction > 0`` adds a non-factorised term
    ``interaction · η(c, b_0, b_1)`` between attributes 0 and 1, with
    ``η ~ N(0, 1)`` double-centred over ``b_0`` and ``b_1`` (so it has no main
    effect).  Main effects and ``η`` come from separate random streams: the
    same ``seed`` with a different ``interaction`` gives the same main effects.

Transfer estimators of the target ``P(C | x1, d2)`` (all rows of a case use
the same attribute ``k``, ``x`` = level of ``k``, ``d`` = the other levels)
    ``no_shift``         the reference: ``P(C | x0, d2)`` itself, as if the
                         change ``x0 → x1`` did nothing (how far the target is
                         from its neighbour; a transfer must beat this).
    ``ratio_pair``       the theorem: one reference setting ``d1``.
    ``ratio_pooled``     the ratio pooled over every ``d ≠ d2`` as a geometric
                         mean (mean log ratio); also exact under the assumption.
    ``quantile_pair``    DSA's quantile mapping (:mod:`dsalib.quantile`): the
                         operator for ``x0 → x1`` estimated from the pair
                         ``(x0, d1) → (x1, d1)``, applied to ``P(C | x0, d2)``.
    ``quantile_pooled``  the same operator pooled (mean shift) over every
                         pair ``(x0, d) → (x1, d)`` with ``d ≠ d2``.
    Pooled estimators leave the target's own setting ``d2`` out: the pair
    ``(x0, d2) → (x1, d2)`` contains the target itself.

Errors are the JSD (natural log, :func:`dsalib.metrics.jsd`), the scaled
Wasserstein-1 distance (:func:`dsalib.metrics.wd_scaled`) and the largest
absolute difference of a probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from . import metrics
from .errors import DsaError, ParameterError
from .quantile import DEFAULT_N_LEVELS, apply_shift, quantile_function, quantile_levels

#: Transfer estimators compared by :func:`transfer_comparison`.
METHODS = ("no_shift", "ratio_pair", "ratio_pooled", "quantile_pair", "quantile_pooled")
#: Kinds of main effects :func:`random_factorised` can draw.
EFFECTS = ("free", "ordinal")


# --------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class FactorisedTable:
    """A full table ``P(C | b)`` on a grid of attributes.

    ``probs`` has shape ``levels + (n_options,)``; ``dist`` is the same as a
    ``(G, K)`` array with subgroups in C order (the last attribute varies
    fastest) and ``keys`` the ``(G, m)`` level indices of its rows.
    """

    probs: np.ndarray
    levels: tuple[int, ...]
    n_options: int
    seed: object
    interaction: float
    scale: float
    effects: str

    @property
    def n_subgroups(self) -> int:
        return int(np.prod(self.levels))

    @property
    def dist(self) -> np.ndarray:
        return self.probs.reshape(-1, self.n_options)

    @property
    def keys(self) -> np.ndarray:
        return np.array(list(np.ndindex(*self.levels)), dtype=np.int64).reshape(-1, len(self.levels))


def _is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and np.isfinite(float(v))


def _check_levels_arg(levels) -> tuple[int, ...]:
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Iterable):
        raise ParameterError(f"levels must be a list of level counts (integers ≥ 2), got {levels!r}")
    out = tuple(levels)
    if len(out) < 2 or not all(_is_int(v) and v >= 2 for v in out):
        raise ParameterError(
            f"levels must list at least two attributes, each with an integer number of levels ≥ 2, got {levels!r}"
        )
    return tuple(int(v) for v in out)


def _seed_sequence(seed) -> np.random.SeedSequence:
    if _is_int(seed) and seed >= 0:
        return np.random.SeedSequence(int(seed))
    if isinstance(seed, (tuple, list)) and seed and all(_is_int(s) and s >= 0 for s in seed):
        return np.random.SeedSequence([int(s) for s in seed])
    raise ParameterError(f"seed must be a non-negative integer or a tuple of them, got {seed!r}")


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def random_factorised(
    levels: Sequence[int] = (2, 3, 4),
    n_options: int = 5,
    seed=0,
    interaction: float = 0.0,
    scale: float = 1.0,
    effects: str = "free",
) -> FactorisedTable:
    """Draw a table ``P(C | b)`` that factorises over the attributes (plus an optional interaction).

    See the module docstring for the model.  ``seed`` is a non-negative int or
    a tuple of them (e.g. ``(seed, table_index)``).
    """
    lv = _check_levels_arg(levels)
    if not _is_int(n_options) or n_options < 2:
        raise ParameterError(f"n_options must be an integer ≥ 2, got {n_options!r}")
    if not _is_real(interaction) or interaction < 0:
        raise ParameterError(f"interaction must be a finite number ≥ 0, got {interaction!r}")
    if not _is_real(scale) or scale <= 0:
        raise ParameterError(f"scale must be a finite number > 0, got {scale!r}")
    if effects not in EFFECTS:
        raise ParameterError(f"unknown effects {effects!r}; choose one of {list(EFFECTS)}")
    main_ss, inter_ss = _seed_sequence(seed).spawn(2)
    main, inter = np.random.default_rng(main_ss), np.random.default_rng(inter_ss)
    m, k = len(lv), int(n_options)
    logits = np.zeros(lv + (k,))
    pos = np.linspace(-1.0, 1.0, k)
    if effects == "ordinal":
        logits += main.normal(0.0, scale, k)
    for j, n_levels in enumerate(lv):
        shape = [1] * m + [k]
        shape[j] = n_levels
        if effects == "free":
            term = main.normal(0.0, scale, (n_levels, k))
        else:
            term = main.normal(0.0, scale, n_levels)[:, None] * pos[None, :]
        logits += term.reshape(shape)
    eta = inter.normal(0.0, 1.0, (lv[0], lv[1], k))
    eta -= eta.mean(axis=0, keepdims=True)
    eta -= eta.mean(axis=1, keepdims=True)
    logits += float(interaction) * eta.reshape((lv[0], lv[1]) + (1,) * (m - 2) + (k,))
    return FactorisedTable(_softmax(logits), lv, k, seed, float(interaction), float(scale), effects)


# --------------------------------------------------------------------------
# Transfer estimators
# --------------------------------------------------------------------------


def _as_probs(p, name: str) -> np.ndarray:
    a = np.asarray(p, dtype=float)
    if a.ndim == 0 or a.shape[-1] < 2:
        raise DsaError(f"{name} must be distribution(s) over ≥ 2 options, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise DsaError(f"{name} contains NaN or infinite values")
    if (a < 0).any():
        raise DsaError(f"{name} contains negative probabilities")
    return a


def _normalize(q: np.ndarray, what: str) -> np.ndarray:
    s = q.sum(axis=-1, keepdims=True)
    if (s <= 0).any() or not np.isfinite(s).all():
        raise DsaError(f"{what}: the transferred distribution has no finite positive mass to normalise")
    return q / s


def ratio_transfer(p_x0_d2, p_x1_d1, p_x0_d1) -> np.ndarray:
    """Theorem 1's estimate of ``P(C | x1, d2)``: ``Normalize(P(C|x0,d2) · P(C|x1,d1) / P(C|x0,d1))``.

    Arrays of shape ``(..., K)`` broadcast against each other.  The ratio needs
    ``P(C | x0, d1) > 0`` for every option; smooth empirical distributions
    first (:func:`smooth`).
    """
    a = _as_probs(p_x0_d2, "p_x0_d2")
    b = _as_probs(p_x1_d1, "p_x1_d1")
    c = _as_probs(p_x0_d1, "p_x0_d1")
    if (c <= 0).any():
        raise DsaError(
            "ratio transfer needs P(C | x0, d1) > 0 for every option; an option has zero "
            "probability (smooth empirical distributions first, e.g. theorem.smooth(counts, 0.5))"
        )
    return _normalize(a * (b / c), "ratio_transfer")


def pooled_ratio_transfer(p_x0_d2, p_x1_ds, p_x0_ds, weights=None) -> np.ndarray:
    """Ratio transfer with the ratio pooled over several reference settings (geometric mean).

    ``p_x1_ds``, ``p_x0_ds``: ``(n, K)`` pairs ``(x1, d), (x0, d)``; the log
    ratios are averaged (optionally weighted) over the ``n`` pairs.  Exact
    under the theorem's assumption, like the single-pair ratio.
    """
    a = _as_probs(p_x0_d2, "p_x0_d2")
    b = np.atleast_2d(_as_probs(p_x1_ds, "p_x1_ds"))
    c = np.atleast_2d(_as_probs(p_x0_ds, "p_x0_ds"))
    if b.shape != c.shape or b.ndim != 2:
        raise DsaError(f"p_x1_ds and p_x0_ds must both have shape (n, K), got {b.shape} and {c.shape}")
    if (b <= 0).any() or (c <= 0).any():
        raise DsaError("pooled ratio transfer needs positive reference probabilities (smooth them first)")
    w = _weights(weights, len(b))
    log_ratio = (w[:, None] * (np.log(b) - np.log(c))).sum(axis=0) / w.sum()
    return _normalize(a * np.exp(log_ratio - log_ratio.max()), "pooled_ratio_transfer")


def quantile_transfer(p_x0_d2, p_x1_ds, p_x0_ds, weights=None, n_levels: int = DEFAULT_N_LEVELS) -> np.ndarray:
    """DSA's shift transfer: the quantile-mapping operator for ``x0 → x1``, applied to ``P(C | x0, d2)``.

    The operator is the (optionally weighted) mean quantile shift over the
    pairs ``(x0, d) → (x1, d)`` given (one pair: the pair version); see
    :mod:`dsalib.quantile` for the continuous reading of the options.
    """
    a = _as_probs(p_x0_d2, "p_x0_d2")
    b = np.atleast_2d(_as_probs(p_x1_ds, "p_x1_ds"))
    c = np.atleast_2d(_as_probs(p_x0_ds, "p_x0_ds"))
    if b.shape != c.shape or b.ndim != 2:
        raise DsaError(f"p_x1_ds and p_x0_ds must both have shape (n, K), got {b.shape} and {c.shape}")
    tau = quantile_levels(n_levels)
    w = _weights(weights, len(b))
    d = quantile_function(b, tau) - quantile_function(c, tau)
    return apply_shift(a, (w[:, None] * d).sum(axis=0) / w.sum(), tau)


def _weights(weights, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=float).reshape(-1)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise DsaError(f"weights must be {n} non-negative finite numbers with a positive sum")
    return w


def smooth(counts, alpha: float) -> np.ndarray:
    """Additive smoothing of answer counts: ``(counts + alpha) / (n + K·alpha)`` per row."""
    c = np.asarray(counts, dtype=float)
    if not _is_real(alpha) or alpha < 0:
        raise ParameterError(f"smoothing alpha must be a finite number ≥ 0, got {alpha!r}")
    s = c + alpha
    return _normalize(s, "smooth")


# --------------------------------------------------------------------------
# Cases: every (attribute, x0, x1, d1, d2)
# --------------------------------------------------------------------------


def _by_attribute(levels: tuple[int, ...], k: int) -> np.ndarray:
    """Flat subgroup index arranged as (levels of attribute k, settings d of the others)."""
    idx = np.arange(int(np.prod(levels))).reshape(levels)
    return np.moveaxis(idx, k, 0).reshape(levels[k], -1)


def transfer_cases(levels: Sequence[int], attributes: Sequence[int] | None = None) -> pd.DataFrame:
    """Every transfer case ``(attribute, x0, x1, d1, d2)`` with ``x0 ≠ x1`` and ``d1 ≠ d2``.

    ``d1``/``d2`` number the settings of the other attributes (C order); the
    columns ``i_x0_d1, i_x1_d1, i_x0_d2, i_x1_d2`` are flat subgroup rows of
    :attr:`FactorisedTable.dist`.
    """
    lv = _check_levels_arg(levels)
    attrs = range(len(lv)) if attributes is None else attributes
    frames = []
    for k in attrs:
        if not _is_int(k) or not 0 <= k < len(lv):
            raise ParameterError(f"attribute {k!r} is not one of 0..{len(lv) - 1}")
        grid = _by_attribute(lv, int(k))
        n_x, n_d = grid.shape
        x0, x1, d1, d2 = (a.ravel() for a in np.meshgrid(
            np.arange(n_x), np.arange(n_x), np.arange(n_d), np.arange(n_d), indexing="ij"))
        keep = (x0 != x1) & (d1 != d2)
        x0, x1, d1, d2 = x0[keep], x1[keep], d1[keep], d2[keep]
        frames.append(pd.DataFrame({
            "attribute": int(k), "x0": x0, "x1": x1, "d1": d1, "d2": d2,
            "i_x0_d1": grid[x0, d1], "i_x1_d1": grid[x1, d1],
            "i_x0_d2": grid[x0, d2], "i_x1_d2": grid[x1, d2],
        }))
    return pd.concat(frames, ignore_index=True)


def _errors(pred: np.ndarray, truth: np.ndarray) -> dict:
    return {
        "max_abs_error": np.abs(pred - truth).max(axis=1),
        "jsd": metrics.jsd(pred, truth),
        "wd_scaled": metrics.wd_scaled(pred, truth),
    }


def exact_recovery(table: FactorisedTable) -> pd.DataFrame:
    """Ratio transfer (single pair) for every case of :func:`transfer_cases`, with its error vs the truth."""
    cases = transfer_cases(table.levels)
    p = table.dist
    pred = ratio_transfer(p[cases["i_x0_d2"]], p[cases["i_x1_d1"]], p[cases["i_x0_d1"]])
    return cases.assign(**_errors(pred, p[cases["i_x1_d2"]]))


def max_recovery_error(table: FactorisedTable) -> float:
    """The largest absolute probability error of ratio transfer over all cases (~1e-16 when factorised)."""
    return float(exact_recovery(table)["max_abs_error"].max())


def transfer_comparison(
    table: FactorisedTable,
    methods: Sequence[str] = METHODS,
    n_levels: int = DEFAULT_N_LEVELS,
) -> pd.DataFrame:
    """Error of each transfer estimator vs the true ``P(C | x1, d2)``, one row per (method, case).

    Pair methods have one row per ``(attribute, x0, x1, d1, d2)``; pooled
    methods and ``no_shift`` one per ``(attribute, x0, x1, d2)`` with
    ``d1 = -1`` (pooled methods use every ``d ≠ d2``).  Columns: ``method, attribute, x0, x1, d1, d2,
    max_abs_error, jsd, wd_scaled``.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ParameterError(f"unknown transfer method(s) {unknown}; choose from {list(METHODS)}")
    tau = quantile_levels(n_levels)
    p = table.dist
    out = []
    cols = ["attribute", "x0", "x1", "d1", "d2"]
    pair = transfer_cases(table.levels)
    truth_pair = p[pair["i_x1_d2"]]
    if "ratio_pair" in methods:
        pred = ratio_transfer(p[pair["i_x0_d2"]], p[pair["i_x1_d1"]], p[pair["i_x0_d1"]])
        out.append(pair[cols].assign(method="ratio_pair", **_errors(pred, truth_pair)))
    if "quantile_pair" in methods:
        d = quantile_function(p[pair["i_x1_d1"]], tau) - quantile_function(p[pair["i_x0_d1"]], tau)
        pred = apply_shift(p[pair["i_x0_d2"]], d, tau)
        out.append(pair[cols].assign(method="quantile_pair", **_errors(pred, truth_pair)))
    pooled = [m for m in ("no_shift", "ratio_pooled", "quantile_pooled") if m in methods]
    if pooled:
        q = quantile_function(p, tau) if "quantile_pooled" in methods else None
        logp = np.log(p)
        rows = {m: [] for m in pooled}
        for k in range(len(table.levels)):
            grid = _by_attribute(table.levels, k)
            n_x, n_d = grid.shape
            x0, x1, d2 = (a.ravel() for a in np.meshgrid(np.arange(n_x), np.arange(n_x), np.arange(n_d), indexing="ij"))
            keep = x0 != x1
            x0, x1, d2 = x0[keep], x1[keep], d2[keep]
            case = pd.DataFrame({"attribute": k, "x0": x0, "x1": x1, "d1": -1, "d2": d2})
            src, tgt, base = p[grid[x0, d2]], p[grid[x1, d2]], grid[x0]
            if "no_shift" in methods:
                rows["no_shift"].append(case.assign(method="no_shift", **_errors(src, tgt)))
            if "ratio_pooled" in methods:
                lr = logp[grid[x1]] - logp[base]  # (cases, n_d, K)
                mean_lr = (lr.sum(axis=1) - lr[np.arange(len(d2)), d2]) / (n_d - 1)
                pred = _normalize(src * np.exp(mean_lr - mean_lr.max(axis=1, keepdims=True)), "ratio_pooled")
                rows["ratio_pooled"].append(case.assign(method="ratio_pooled", **_errors(pred, tgt)))
            if "quantile_pooled" in methods:
                sh = q[grid[x1]] - q[base]  # (cases, n_d, M)
                mean_sh = (sh.sum(axis=1) - sh[np.arange(len(d2)), d2]) / (n_d - 1)
                pred = apply_shift(src, mean_sh, tau)
                rows["quantile_pooled"].append(case.assign(method="quantile_pooled", **_errors(pred, tgt)))
        out.extend(pd.concat(v, ignore_index=True) for v in rows.values())
    df = pd.concat(out, ignore_index=True)
    order = {m: i for i, m in enumerate(METHODS)}
    df = df.sort_values("method", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    return df[["method"] + cols + ["max_abs_error", "jsd", "wd_scaled"]]


def summarize_transfer(df: pd.DataFrame, by: Sequence[str] = ("method",)) -> pd.DataFrame:
    """Mean and max of the errors of :func:`transfer_comparison` rows, grouped by ``by``."""
    g = df.groupby(list(by), sort=False)
    out = g.agg(
        cases=("jsd", "size"),
        jsd_mean=("jsd", "mean"),
        jsd_max=("jsd", "max"),
        wd_scaled_mean=("wd_scaled", "mean"),
        max_abs_error=("max_abs_error", "max"),
    )
    return out.reset_index()


# --------------------------------------------------------------------------
# Error growth with interaction strength
# --------------------------------------------------------------------------


def error_growth(
    interactions: Sequence[float],
    n_tables: int = 10,
    seed: int = 0,
    levels: Sequence[int] = (2, 3, 4),
    n_options: int = 5,
    scale: float = 1.0,
    effects: str = "free",
    methods: Sequence[str] = METHODS,
    n_levels: int = DEFAULT_N_LEVELS,
) -> pd.DataFrame:
    """Transfer error as the interaction strength grows: one row per (interaction, table, method).

    Table ``t`` is ``random_factorised(seed=(seed, t), interaction=s)``, so
    every strength ``s`` sees the same main effects and the same interaction
    pattern, only scaled.  Columns: ``effects, interaction, table, method,
    cases, jsd_mean, jsd_max, wd_scaled_mean, max_abs_error``.
    """
    if not _is_int(n_tables) or n_tables < 1:
        raise ParameterError(f"n_tables must be an integer ≥ 1, got {n_tables!r}")
    frames = []
    for s in interactions:
        for t in range(n_tables):
            table = random_factorised(levels, n_options, (seed, t), s, scale, effects)
            summ = summarize_transfer(transfer_comparison(table, methods, n_levels))
            frames.append(summ.assign(effects=effects, interaction=float(s), table=t))
    df = pd.concat(frames, ignore_index=True)
    first = ["effects", "interaction", "table", "method"]
    return df[first + [c for c in df.columns if c not in first]]


# --------------------------------------------------------------------------
# Finite samples
# --------------------------------------------------------------------------

#: Estimators of the rare subgroup compared by :func:`finite_sample`.
FINITE_METHODS = ("empirical", "empirical_smoothed") + METHODS


def finite_sample(
    reference_sizes: Sequence[int],
    rare_sizes: Sequence[int],
    repetitions: int = 100,
    seed: int = 0,
    levels: Sequence[int] = (2, 3, 4),
    n_options: int = 5,
    interaction: float = 0.0,
    scale: float = 1.0,
    effects: str = "free",
    smoothing: float = 0.5,
    n_levels: int = DEFAULT_N_LEVELS,
) -> pd.DataFrame:
    """Estimate a rare subgroup from samples: its own few answers vs shift transfer from large subgroups.

    Repetition ``r`` draws a table ``random_factorised(seed=(seed, r))`` and,
    with a generator seeded by ``(seed, r)``, a target ``(x1, d2)``: an
    attribute ``k``, two of its levels ``x0 ≠ x1``, a setting ``d2`` of the
    others and a single reference setting ``d1 ≠ d2`` for the pair methods.
    For each reference size every subgroup except the target gets that many
    respondents (multinomial draws from the truth); for each rare size the
    target gets that many.

    Estimators of the target: ``empirical`` (its own proportions),
    ``empirical_smoothed`` (``smooth(counts, smoothing)``), and the transfer
    methods of :func:`transfer_comparison` (``no_shift`` included), computed from the
    *smoothed* empirical distributions of the reference subgroups (the ratio
    needs positive probabilities; the same inputs go to the quantile methods).
    Transfer estimates do not use the target's own sample, so their rows repeat
    the same value for every rare size of a repetition.

    Returns one row per (repetition, reference size, rare size, method):
    ``effects, interaction, rep, attribute, reference_size, rare_size, method,
    jsd, wd_scaled``.
    """
    ref_sizes = _check_sizes(reference_sizes, "reference_sizes")
    rare = _check_sizes(rare_sizes, "rare_sizes")
    if not _is_int(repetitions) or repetitions < 1:
        raise ParameterError(f"repetitions must be an integer ≥ 1, got {repetitions!r}")
    if not _is_real(smoothing) or smoothing <= 0:
        raise ParameterError(f"smoothing must be a number > 0 (the ratio needs positive probabilities), got {smoothing!r}")
    if not _is_int(seed) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {seed!r}")
    tau = quantile_levels(n_levels)
    rows = []
    for r in range(repetitions):
        table = random_factorised(levels, n_options, (seed, r), interaction, scale, effects)
        rng = np.random.default_rng([seed, r, 1])
        m = len(table.levels)
        k = int(rng.integers(m))
        grid = _by_attribute(table.levels, k)
        n_x, n_d = grid.shape
        x0, x1 = (int(v) for v in rng.choice(n_x, size=2, replace=False))
        d2, d1 = (int(v) for v in rng.choice(n_d, size=2, replace=False))
        others = np.array([d for d in range(n_d) if d != d2])
        target = grid[x1, d2]
        truth = table.dist[target][None, :]
        for n_ref in ref_sizes:
            counts = rng.multinomial(n_ref, table.dist)
            s = smooth(counts, smoothing)
            est = {
                "no_shift": s[grid[x0, d2]],
                "ratio_pair": ratio_transfer(s[grid[x0, d2]], s[grid[x1, d1]], s[grid[x0, d1]]),
                "ratio_pooled": pooled_ratio_transfer(s[grid[x0, d2]], s[grid[x1, others]], s[grid[x0, others]]),
                "quantile_pair": quantile_transfer(s[grid[x0, d2]], s[grid[x1, [d1]]], s[grid[x0, [d1]]], n_levels=tau.size),
                "quantile_pooled": quantile_transfer(s[grid[x0, d2]], s[grid[x1, others]], s[grid[x0, others]], n_levels=tau.size),
            }
            transfer_err = {name: (float(metrics.jsd(p, truth)[0]), float(metrics.wd_scaled(p, truth)[0]))
                            for name, p in est.items()}
            for n_rare in rare:
                c = rng.multinomial(n_rare, table.dist[target])
                own = {"empirical": c / n_rare, "empirical_smoothed": smooth(c, smoothing)}
                errs = {name: (float(metrics.jsd(p, truth)[0]), float(metrics.wd_scaled(p, truth)[0]))
                        for name, p in own.items()}
                errs.update(transfer_err)
                for name in FINITE_METHODS:
                    rows.append((effects, float(interaction), r, k, n_ref, n_rare, name) + errs[name])
    return pd.DataFrame(rows, columns=["effects", "interaction", "rep", "attribute", "reference_size",
                                       "rare_size", "method", "jsd", "wd_scaled"])


def _check_sizes(sizes, name: str) -> list[int]:
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Iterable):
        raise ParameterError(f"{name} must be a list of positive integers, got {sizes!r}")
    out = list(sizes)
    if not out or not all(_is_int(v) and v >= 1 for v in out):
        raise ParameterError(f"{name} must be a non-empty list of positive integers (sample sizes), got {sizes!r}")
    return [int(v) for v in out]


def summarize_finite(df: pd.DataFrame) -> pd.DataFrame:
    """Mean JSD / WD (and the standard error of the mean JSD) per setting and method."""
    keys = ["effects", "interaction", "reference_size", "rare_size", "method"]
    g = df.groupby(keys, sort=True)
    out = g.agg(reps=("jsd", "size"), jsd_mean=("jsd", "mean"), jsd_sd=("jsd", "std"),
                wd_scaled_mean=("wd_scaled", "mean")).reset_index()
    out["jsd_se"] = out["jsd_sd"] / np.sqrt(out["reps"])
    return out.drop(columns="jsd_sd")


def break_even(summary: pd.DataFrame, own: str = "empirical", transfer: str = "ratio_pooled") -> pd.DataFrame:
    """The smallest rare size at which the target's own sample is at least as good as a transfer.

    For each ``(effects, interaction, reference_size)``: the first rare size
    (on the grid) where the mean JSD of ``own`` is ≤ that of ``transfer``;
    ``NaN`` when the own sample never catches up on the grid.
    """
    rows = []
    for key, g in summary.groupby(["effects", "interaction", "reference_size"], sort=True):
        a = g[g["method"] == own].set_index("rare_size")["jsd_mean"]
        b = g[g["method"] == transfer].set_index("rare_size")["jsd_mean"]
        sizes = sorted(set(a.index) & set(b.index))
        hit = [n for n in sizes if a[n] <= b[n]]
        rows.append(dict(zip(["effects", "interaction", "reference_size"], key),
                         own=own, transfer=transfer,
                         break_even_rare_size=float(hit[0]) if hit else float("nan"),
                         max_rare_size=float(max(sizes)) if sizes else float("nan")))
    return pd.DataFrame(rows)
