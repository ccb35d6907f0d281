"""Quantile mapping on a discrete ordinal scale (dsalib.quantile)."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dsalib.errors import DsaError
from dsalib.quantile import (
    QuantileOperator,
    apply_shift,
    cdf,
    estimate_operators,
    quantile_function,
    quantile_levels,
    shift,
)

FAST = settings(max_examples=60, deadline=None)


@st.composite
def dists(draw, k=None, min_mass=0.0, k_max=11):
    """A distribution over K options; with min_mass 0 some options may be empty."""
    k = draw(st.integers(2, k_max)) if k is None else k
    raw = draw(arrays(np.float64, k, elements=st.floats(min_mass, 1.0, allow_nan=False)))
    if raw.sum() <= 0:
        raw[draw(st.integers(0, k - 1))] = 1.0
    return raw / raw.sum()


@st.composite
def dist_pairs(draw, min_mass=0.0):
    k = draw(st.integers(2, 11))
    return draw(dists(k=k, min_mass=min_mass)), draw(dists(k=k))


def _is_dist(p):
    return np.isfinite(p).all() and (p >= 0).all() and np.allclose(p.sum(axis=-1), 1.0, atol=1e-12)


# ---------------------------------------------------------------- continuous reading


def test_levels_are_slice_midpoints():
    tau = quantile_levels(100)
    assert tau[0] == pytest.approx(0.005) and tau[-1] == pytest.approx(0.995)
    assert len(tau) == 100
    with pytest.raises(DsaError):
        quantile_levels(0)


def test_uniform_quantiles_are_linear():
    k = 4
    tau = quantile_levels(8)
    q = quantile_function(np.full(k, 0.25), tau)[0]
    np.testing.assert_allclose(q, -0.5 + k * tau)


def test_cdf_piecewise_linear_and_inverse_of_quantiles():
    p = np.array([0.2, 0.0, 0.5, 0.3])
    np.testing.assert_allclose(cdf(p, [-1.0, -0.5, 0.0, 0.5, 1.5, 2.0, 3.5, 9.0])[0],
                               [0, 0, 0.1, 0.2, 0.2, 0.45, 1.0, 1.0])
    tau = quantile_levels(50)
    np.testing.assert_allclose(cdf(p, quantile_function(p, tau))[0], tau, atol=1e-12)
    # the empty option 1 is jumped over
    q = quantile_function(p, tau)[0]
    assert not ((q > 0.5) & (q < 1.5)).any()


def test_degenerate_quantiles_span_the_option():
    q = quantile_function(np.eye(5)[3], quantile_levels(10))[0]
    np.testing.assert_allclose(q, 2.5 + quantile_levels(10))


@FAST
@given(dist_pairs())
def test_shift_is_difference_of_quantile_functions(pair):
    a, b = pair
    d = shift(a, b)
    assert d.shape == (100,)
    np.testing.assert_allclose(d, quantile_function(b)[0] - quantile_function(a)[0])
    np.testing.assert_allclose(shift(b, a), -d)


# ---------------------------------------------------------------- applying a shift


@FAST
@given(dists())
def test_identity_returns_input_exactly(p):
    out = QuantileOperator.identity().apply(p)
    np.testing.assert_allclose(out, p, atol=1e-12)


@FAST
@given(dists(), st.data())
def test_output_is_a_distribution(p, data):
    d = data.draw(arrays(np.float64, 100, elements=st.floats(-15, 15, allow_nan=False)))
    out = apply_shift(p, d)
    assert out.shape == p.shape
    assert _is_dist(out)


@FAST
@given(st.floats(2.0, 4.0), st.floats(-3.0, 3.0))
def test_location_shift_moves_the_mean(sd, s):
    k = 31
    x = np.arange(k)
    p = np.exp(-0.5 * ((x - 15) / sd) ** 2)
    p /= p.sum()
    out = apply_shift(p, np.full(100, s))
    assert (out * x).sum() - (p * x).sum() == pytest.approx(s, abs=0.03)


def test_integer_shift_inside_the_scale_is_exact():
    p = np.array([0.0, 0.1, 0.6, 0.3, 0.0, 0.0])
    np.testing.assert_allclose(apply_shift(p, np.full(100, 2.0)), np.roll(p, 2), atol=1e-12)
    np.testing.assert_allclose(apply_shift(p, np.full(100, -1.0)), np.roll(p, -1), atol=1e-12)


def test_clipping_puts_overflow_on_the_end_options():
    p = np.array([0.25, 0.25, 0.25, 0.25])
    np.testing.assert_allclose(apply_shift(p, np.full(100, 50.0)), [0, 0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(apply_shift(p, np.full(100, -50.0)), [1, 0, 0, 0], atol=1e-12)
    out = apply_shift(p, np.full(100, 1.0))
    np.testing.assert_allclose(out, [0, 0.25, 0.25, 0.5], atol=1e-12)


@pytest.mark.parametrize("s", [0.0, 0.3, 1.0, -2.0, 9.0])
def test_degenerate_distribution_is_defined(s):
    p = np.eye(5)[2]
    out = apply_shift(p, np.full(100, s))
    assert _is_dist(out)
    if s == 0.3:
        np.testing.assert_allclose(out, [0, 0, 0.7, 0.3, 0], atol=1e-12)
    if s == 1.0:
        np.testing.assert_allclose(out, np.eye(5)[3], atol=1e-12)
    if s == 9.0:
        np.testing.assert_allclose(out, np.eye(5)[4], atol=1e-12)


def test_degenerate_pair_maps_exactly():
    op = QuantileOperator.estimate(np.eye(6)[1], np.eye(6)[4])
    np.testing.assert_allclose(op.shift, 3.0)
    np.testing.assert_allclose(op.apply(np.eye(6)[1]), np.eye(6)[4], atol=1e-12)


@settings(max_examples=80, deadline=None)
@given(dist_pairs(min_mass=1e-3), st.sampled_from([50, 100, 400]))
def test_single_pair_operator_maps_from_onto_to(pair, m):
    p_from, p_to = pair
    k = len(p_from)
    op = QuantileOperator.estimate(p_from, p_to, levels=m)
    out = op.apply(p_from)
    assert _is_dist(out)
    bound = (k - 1) / (2 * m * p_from.min()) + 2 * (k - 1) / m  # see the module docstring
    assert np.abs(out - p_to).sum() <= bound


def test_single_pair_typical_scale_is_close():
    rng = np.random.default_rng(0)
    errs = []
    for _ in range(50):
        a, b = rng.dirichlet(np.full(11, 3.0), size=2)
        errs.append(np.abs(QuantileOperator.estimate(a, b).apply(a) - b).sum())
    assert np.mean(errs) < 0.03
    assert max(errs) < 0.1


def test_batch_apply_matches_rows():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(5), size=4)
    op = QuantileOperator(np.linspace(-1, 1, 100))
    out = op.apply(p)
    assert out.shape == (4, 5)
    for g in range(4):
        np.testing.assert_allclose(out[g], op(p[g]))


def test_bad_inputs_raise():
    with pytest.raises(DsaError):
        apply_shift([0.5, -0.1, 0.6], np.zeros(100))
    with pytest.raises(DsaError):
        apply_shift([0.5, np.nan, 0.5], np.zeros(100))
    with pytest.raises(DsaError):
        apply_shift([0.0, 0.0], np.zeros(100))
    with pytest.raises(DsaError):
        apply_shift([0.5, 0.5], np.zeros(7))
    with pytest.raises(DsaError):
        shift([0.5, 0.5], [0.2, 0.3, 0.5])
    with pytest.raises(DsaError):
        QuantileOperator(np.zeros(3), levels=[0.1, 0.05, 0.9])
    with pytest.raises(DsaError):
        QuantileOperator.estimate(np.eye(3)[:2], np.eye(3)[1:], weights=[1.0, -1.0])


def test_unnormalised_input_is_renormalised():
    np.testing.assert_allclose(QuantileOperator.identity().apply([2.0, 2.0]), [0.5, 0.5])


# ---------------------------------------------------------------- pooled operators


def _toy():
    """Subgroups over 2 attributes (2 x 3 levels); the second attribute shifts answers up."""
    keys = np.array([(a, b) for a in range(2) for b in range(3)])
    x = np.arange(7)
    pred = np.stack([np.exp(-0.5 * ((x - 2 - 1.0 * b - 0.5 * a) / 1.2) ** 2) for a, b in keys])
    pred /= pred.sum(axis=1, keepdims=True)
    rows = []
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            diff = np.flatnonzero(keys[i] != keys[j])
            if len(diff) == 1:
                at = int(diff[0])
                rows.append((i, j, at, keys[i, at], keys[j, at]))
    pairs = pd.DataFrame(rows, columns=["a", "b", "attribute", "level_a", "level_b"])
    return pred, keys, pairs


def test_estimate_operators_pools_all_pairs_both_directions():
    pred, keys, pairs = _toy()
    ops = estimate_operators(pred, keys, pairs)
    expected = {(0, 0, 1), (0, 1, 0), (1, 0, 1), (1, 1, 0), (1, 0, 2), (1, 2, 0), (1, 1, 2), (1, 2, 1)}
    assert set(ops) == expected
    op = ops[(1, 0, 2)]
    assert op.n_pairs == 2 and op.attribute == 1 and (op.level_from, op.level_to) == (0, 2)
    manual = np.mean([shift(pred[0], pred[2]), shift(pred[3], pred[5])], axis=0)
    np.testing.assert_allclose(op.shift, manual)
    np.testing.assert_allclose(ops[(1, 2, 0)].shift, -manual)
    # a shift of about two options moves the distribution up by about two
    moved = op.apply(pred[0])
    assert (moved * np.arange(7)).sum() - (pred[0] * np.arange(7)).sum() == pytest.approx(2.0, abs=0.15)


def test_estimate_operators_reverse_oriented_pairs_are_pooled():
    pred, keys, pairs = _toy()
    flipped = pairs.rename(columns={"a": "b", "b": "a", "level_a": "level_b", "level_b": "level_a"})
    a = estimate_operators(pred, keys, pairs)
    b = estimate_operators(pred, keys, flipped)
    for key in a:
        np.testing.assert_allclose(a[key].shift, b[key].shift, atol=1e-12)


def test_estimate_operators_weights():
    pred, keys, pairs = _toy()
    sel = (pairs["attribute"] == 1) & (pairs["level_a"] == 0) & (pairs["level_b"] == 2)
    w = np.where(sel & (pairs["a"] == 0), 1.0, 0.0) + np.where(~sel, 1.0, 0.0)
    ops = estimate_operators(pred, keys, pairs, weights=w)
    np.testing.assert_allclose(ops[(1, 0, 2)].shift, shift(pred[0], pred[2]))
    pairs = pairs.assign(wt=w)
    ops2 = estimate_operators(pred, keys, pairs, weights="wt")
    np.testing.assert_allclose(ops2[(1, 0, 2)].shift, ops[(1, 0, 2)].shift)


def test_estimate_operators_with_hamming1_pairs_frame():
    from dsalib.surveys import SubgroupTable, hamming1_pairs

    pred, keys, _ = _toy()
    table = SubgroupTable("toy", "q", ("x", "y"), (("0", "1"), ("0", "1", "2")), keys,
                          pred * 20, np.full(len(keys), 20), tuple("abcdefg"))
    pairs = hamming1_pairs(table, min_size=10)
    ops = estimate_operators(pred, keys, pairs)
    assert len(ops) == 8


def test_estimate_operators_rejects_inconsistent_pairs():
    pred, keys, pairs = _toy()
    bad = pairs.copy()
    bad.loc[0, "attribute"] = 1 - bad.loc[0, "attribute"]
    with pytest.raises(DsaError, match="does not differ"):
        estimate_operators(pred, keys, bad)
    bad = pairs.copy()
    bad.loc[0, "level_b"] = 2
    with pytest.raises(DsaError, match="level_a/level_b"):
        estimate_operators(pred, keys, bad)
    with pytest.raises(DsaError, match="columns"):
        estimate_operators(pred, keys, pairs.drop(columns="attribute"))
    with pytest.raises(DsaError):
        estimate_operators(pred, keys[:3], pairs)
    assert estimate_operators(pred, keys, pairs.iloc[:0]) == {}


# ---------------------------------------------------------------- ratio operator and the Phase 2 plan


def test_ratio_operator_is_exact_on_a_factorised_table():
    """Theorem 1: the pooled log-ratio operator transfers a change exactly; the quantile operator does not."""
    from dsalib import theorem
    from dsalib.surveys import SubgroupTable, hamming1_pairs

    table = theorem.random_factorised([2, 3, 3], 5, 7, 0.0, 1.0, "ordinal")
    keys, dist = table.keys, table.dist
    sub = SubgroupTable("toy", "q", ("x", "y", "z"), (("0", "1"), ("0", "1", "2"), ("0", "1", "2")), keys,
                        dist * 100, np.full(len(keys), 100), tuple("abcde"))
    pairs = hamming1_pairs(sub, 1)
    ratio = estimate_operators(dist, keys, pairs, kind="ratio")
    quant = estimate_operators(dist, keys, pairs, kind="quantile")
    assert set(ratio) == set(quant)
    worst_ratio = worst_quant = 0.0
    for a, b, j in pairs[["a", "b", "attribute"]].itertuples(index=False):
        key = (j, keys[a, j], keys[b, j])
        worst_ratio = max(worst_ratio, np.abs(ratio[key].apply(dist[a]) - dist[b]).max())
        worst_quant = max(worst_quant, np.abs(quant[key].apply(dist[a]) - dist[b]).max())
    assert worst_ratio < 1e-12
    assert worst_quant > 0.01  # quantile mapping is not Theorem 1's transfer


def test_ratio_operator_inverse_and_identity():
    from dsalib.quantile import RatioOperator

    p = np.array([0.1, 0.2, 0.3, 0.4])
    op = RatioOperator(np.array([0.5, -0.2, 0.1, 0.0]))
    np.testing.assert_allclose(op.inverse().apply(op.apply(p)), p, atol=1e-12)
    np.testing.assert_allclose(RatioOperator(np.full(4, 0.3)).apply(p), p, atol=1e-12)  # a constant is no change
    q = op.apply(np.array([0.0, 0.5, 0.5, 0.0]))
    assert q[0] == 0 and q[3] == 0 and _is_dist(q)  # an empty option stays empty
    with pytest.raises(DsaError, match="options"):
        op.apply(np.array([0.5, 0.5]))
    with pytest.raises(DsaError, match="operator kind"):
        estimate_operators(*_toy(), kind="mean")


def test_shift_plan_orients_pairs_and_weights_operators():
    from dsalib.quantile import shift_plan
    from dsalib.surveys import SubgroupTable, hamming1_pairs

    pred, keys, _ = _toy()
    n = np.array([50, 5, 20, 1, 30, 30])
    table = SubgroupTable("toy", "q", ("x", "y"), (("0", "1"), ("0", "1", "2")), keys,
                          pred * n[:, None], n, tuple("abcdefg"))
    pairs = hamming1_pairs(table, 1)
    plan = shift_plan(pred, keys, n, pairs, pairs)
    assert len(plan) == len(pairs)
    assert (n[plan.ref] >= n[plan.small]).all()
    for i in range(len(plan)):
        k, u, v = plan.change(i)
        assert keys[plan.ref[i], k] == u and keys[plan.small[i], k] == v
    t = plan.targets(pred[plan.ref])
    for i in range(len(plan)):
        np.testing.assert_allclose(t[i], plan.operators[plan.change(i)].apply(pred[plan.ref[i]]))
    # harmonic weights n_a n_b / (n_a + n_b) of the three pairs that change attribute 0
    h = shift_plan(pred, keys, n, pairs, pairs, operator_weights="harmonic")
    w = np.array([50 * 1 / 51, 5 * 30 / 35, 20 * 30 / 50])
    d = [shift(pred[0], pred[3]), shift(pred[1], pred[4]), shift(pred[2], pred[5])]
    expected = sum(wi * di for wi, di in zip(w, d)) / w.sum()
    np.testing.assert_allclose(h.operators[(0, 0, 1)].shift, expected)
    with pytest.raises(DsaError, match="operator_weights"):
        shift_plan(pred, keys, n, pairs, pairs, operator_weights="size")
