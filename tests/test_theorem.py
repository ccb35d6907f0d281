"""Theorem 1 (paper appendix F): exact recovery, its failure under interaction, finite samples."""

import numpy as np
import pandas as pd
import pytest

from dsalib import theorem as T
from dsalib.errors import DsaError, ParameterError
from dsalib.quantile import QuantileOperator


@pytest.mark.parametrize("effects", T.EFFECTS)
@pytest.mark.parametrize("levels", [(2, 3, 4), (3, 3), (2, 2, 2, 2)])
@pytest.mark.parametrize("seed", [0, 7])
def test_exact_recovery_on_factorised_tables(levels, effects, seed):
    table = T.random_factorised(levels, n_options=5, seed=seed, effects=effects)
    df = T.exact_recovery(table)
    assert len(df) == len(T.transfer_cases(levels))
    assert df["max_abs_error"].max() < 1e-12
    assert df["jsd"].max() < 1e-12
    assert T.max_recovery_error(table) < 1e-12


def test_tables_are_distributions_and_seeded():
    a = T.random_factorised(seed=3)
    b = T.random_factorised(seed=3)
    c = T.random_factorised(seed=4)
    assert a.probs.shape == (2, 3, 4, 5)
    assert a.dist.shape == (24, 5) and a.keys.shape == (24, 3)
    np.testing.assert_allclose(a.dist.sum(axis=1), 1.0)
    assert (a.dist > 0).all()
    np.testing.assert_array_equal(a.probs, b.probs)
    assert not np.allclose(a.probs, c.probs)
    # keys and dist rows agree (C order)
    np.testing.assert_array_equal(a.dist[5], a.probs[tuple(a.keys[5])])


def test_interaction_only_adds_a_scaled_term():
    """Same seed, different strengths: log-odds differ by s · η (same main effects, same pattern)."""
    logit = lambda t: np.log(t.probs) - np.log(t.probs[..., :1])  # noqa: E731
    base = T.random_factorised(seed=5, interaction=0.0)
    d1 = logit(T.random_factorised(seed=5, interaction=0.5)) - logit(base)
    d2 = logit(T.random_factorised(seed=5, interaction=1.5)) - logit(base)
    np.testing.assert_allclose(d2, 3 * d1, atol=1e-10)
    assert np.abs(d1).max() > 0.05
    # the interaction term lives on attributes 0 and 1 only: constant along attribute 2
    np.testing.assert_allclose(d1, d1[:, :, :1, :] * np.ones((1, 1, 4, 1)), atol=1e-10)


def test_interaction_breaks_exact_recovery():
    table = T.random_factorised(seed=0, interaction=0.5)
    assert T.max_recovery_error(table) > 1e-3


def test_error_grows_with_interaction():
    grid = [0.0, 0.25, 0.5, 1.0, 2.0]
    df = T.error_growth(grid, n_tables=5, seed=0, methods=("ratio_pair", "ratio_pooled"))
    curve = df.groupby(["method", "interaction"])["jsd_mean"].mean().unstack("interaction")
    for method, row in curve.iterrows():
        vals = row[grid].to_numpy()
        assert vals[0] < 1e-12, method
        assert (np.diff(vals) > 0).all(), (method, vals)
    assert set(df.columns) >= {"effects", "interaction", "table", "method", "jsd_mean", "max_abs_error"}


def test_ratio_transfer_basics():
    a = np.array([0.2, 0.3, 0.5])
    b = np.array([0.1, 0.6, 0.3])
    c = np.array([0.25, 0.25, 0.5])
    out = T.ratio_transfer(a, b, c)
    expect = a * b / c
    np.testing.assert_allclose(out, expect / expect.sum())
    # identity change: no shift
    np.testing.assert_allclose(T.ratio_transfer(a, c, c), a)
    # broadcasting over rows
    out2 = T.ratio_transfer(np.stack([a, b]), b, c)
    assert out2.shape == (2, 3)
    with pytest.raises(DsaError, match="P\\(C \\| x0, d1\\) > 0"):
        T.ratio_transfer(a, b, np.array([0.0, 0.5, 0.5]))
    with pytest.raises(DsaError, match="negative"):
        T.ratio_transfer(-a, b, c)


def test_pooled_ratio_equals_pair_ratio_for_one_pair_and_is_exact():
    table = T.random_factorised(seed=2)
    p = table.probs  # (2, 3, 4, 5): change attribute 0 from 0 to 1, d = (b1, b2)
    d_all = [(i, j) for i in range(3) for j in range(4)]
    d2 = d_all[0]
    others = d_all[1:]
    x0d = np.array([p[(0,) + d] for d in others])
    x1d = np.array([p[(1,) + d] for d in others])
    pooled = T.pooled_ratio_transfer(p[(0,) + d2], x1d, x0d)
    np.testing.assert_allclose(pooled, p[(1,) + d2], atol=1e-12)
    np.testing.assert_allclose(
        T.pooled_ratio_transfer(p[(0,) + d2], x1d[:1], x0d[:1]),
        T.ratio_transfer(p[(0,) + d2], x1d[0], x0d[0]),
        atol=1e-14,
    )


def test_quantile_transfer_uses_dsalib_quantile():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=5)
    op = QuantileOperator.estimate(p[1:3], p[3:5], levels=50)
    np.testing.assert_allclose(T.quantile_transfer(p[0], p[3:5], p[1:3], n_levels=50), op.apply(p[0]), atol=1e-14)
    # identical pair: identity operator
    np.testing.assert_allclose(T.quantile_transfer(p[0], p[1:2], p[1:2]), p[0], atol=1e-12)


def test_transfer_comparison_shapes_and_findings():
    table = T.random_factorised((2, 3, 4), seed=0)
    df = T.transfer_comparison(table, n_levels=50)
    counts = df["method"].value_counts()
    # pair cases: sum_k L_k (L_k - 1) D_k (D_k - 1); pooled cases: sum_k L_k (L_k - 1) D_k
    assert counts["ratio_pair"] == counts["quantile_pair"] == 2 * 1 * 12 * 11 + 3 * 2 * 8 * 7 + 4 * 3 * 6 * 5
    assert counts["ratio_pooled"] == counts["quantile_pooled"] == 2 * 12 + 6 * 8 + 12 * 6
    s = T.summarize_transfer(df).set_index("method")
    assert s.loc["ratio_pair", "max_abs_error"] < 1e-12
    assert s.loc["ratio_pooled", "max_abs_error"] < 1e-12
    # quantile mapping is not what the theorem guarantees: it is off on factorised tables
    assert s.loc["quantile_pair", "jsd_mean"] > 1e-3
    assert s.loc["quantile_pooled", "jsd_mean"] > 1e-3
    with pytest.raises(ParameterError, match="unknown transfer method"):
        T.transfer_comparison(table, methods=("ratio",))


def test_pooled_comparison_matches_direct_computation():
    """The vectorised leave-d2-out pooling equals pooled_ratio_transfer / quantile_transfer case by case."""
    table = T.random_factorised((3, 2, 2), seed=1, interaction=0.7)
    df = T.transfer_comparison(table, methods=("ratio_pooled", "quantile_pooled"), n_levels=40)
    grid = T._by_attribute(table.levels, 0)
    p = table.dist
    row = df[(df.method == "quantile_pooled") & (df.attribute == 0) & (df.x0 == 2) & (df.x1 == 0) & (df.d2 == 1)]
    others = [0, 2, 3]
    pred = T.quantile_transfer(p[grid[2, 1]], p[grid[0, others]], p[grid[2, others]], n_levels=40)
    assert row["jsd"].iloc[0] == pytest.approx(float(T.metrics.jsd(pred, p[grid[0, 1]])[0]), abs=1e-14)
    row = df[(df.method == "ratio_pooled") & (df.attribute == 0) & (df.x0 == 2) & (df.x1 == 0) & (df.d2 == 1)]
    pred = T.pooled_ratio_transfer(p[grid[2, 1]], p[grid[0, others]], p[grid[2, others]])
    assert row["jsd"].iloc[0] == pytest.approx(float(T.metrics.jsd(pred, p[grid[0, 1]])[0]), abs=1e-14)


def test_finite_sample():
    kw = dict(reference_sizes=[30, 3000], rare_sizes=[5, 2000], repetitions=20, seed=0, n_levels=20)
    df = T.finite_sample(**kw)
    assert set(df["method"]) == set(T.FINITE_METHODS)
    assert len(df) == 20 * 2 * 2 * len(T.FINITE_METHODS)
    pd.testing.assert_frame_equal(df, T.finite_sample(**kw))  # seeded
    s = T.summarize_finite(df).set_index(["reference_size", "rare_size", "method"])["jsd_mean"]
    # the own sample gets better with its size; transfers get better with the reference size
    assert s[(30, 2000, "empirical")] < s[(30, 5, "empirical")] / 10
    assert s[(3000, 5, "ratio_pooled")] < s[(30, 5, "ratio_pooled")]
    # transfers do not use the rare sample: identical across rare sizes
    t = df[df.method == "ratio_pair"].pivot_table(index=["rep", "reference_size"], columns="rare_size", values="jsd")
    np.testing.assert_array_equal(t[5], t[2000])
    # with large references, the exact (factorised) transfer beats 5 own respondents
    assert s[(3000, 5, "ratio_pooled")] < s[(3000, 5, "empirical")]
    be = T.break_even(T.summarize_finite(df))
    assert set(be.columns) >= {"reference_size", "break_even_rare_size"}


def test_finite_sample_rejects_bad_sizes():
    with pytest.raises(ParameterError, match="rare_sizes"):
        T.finite_sample([100], [-5], repetitions=2)
    with pytest.raises(ParameterError, match="reference_sizes"):
        T.finite_sample([], [5], repetitions=2)
    with pytest.raises(ParameterError, match="smoothing"):
        T.finite_sample([100], [5], repetitions=2, smoothing=0.0)


def test_random_factorised_rejects_bad_arguments():
    with pytest.raises(ParameterError, match="levels"):
        T.random_factorised(levels=(3,))
    with pytest.raises(ParameterError, match="levels"):
        T.random_factorised(levels=(1, 3))
    with pytest.raises(ParameterError, match="n_options"):
        T.random_factorised(n_options=1)
    with pytest.raises(ParameterError, match="interaction"):
        T.random_factorised(interaction=-1)
    with pytest.raises(ParameterError, match="effects"):
        T.random_factorised(effects="linear")
    with pytest.raises(ParameterError, match="seed"):
        T.random_factorised(seed=-1)


def _defaults():
    return dict(seed=0, levels=[2, 3, 4], n_options=5, effect_scale=1.0, effects=["free"], n_quantile_levels=100,
                interaction_grid=[0.0, 1.0], n_tables=2, finite_interactions=[0.0], reference_sizes=[100],
                rare_sizes=[5, 10], repetitions=3, smoothing=0.5, output_dir="outputs/x")


def test_theorem_parameters_are_checked():
    from dsalib.config import TheoremConfig

    p = TheoremConfig.from_params(_defaults()).to_params()
    assert p["levels"] == [2, 3, 4] and p["effect_scale"] == 1.0
    assert TheoremConfig.from_params({**_defaults(), "effect_scale": 2}).effect_scale == 2.0  # YAML int for a float
    with pytest.raises(ParameterError, match="unknown parameter.*repetitons"):
        TheoremConfig.from_params({**_defaults(), "repetitons": 3})
    with pytest.raises(ParameterError, match=r"rare_sizes\[1\].*≥ 1.*-10"):
        TheoremConfig.from_params({**_defaults(), "rare_sizes": [5, -10]})
    with pytest.raises(ParameterError, match="reference_sizes"):
        TheoremConfig.from_params({**_defaults(), "reference_sizes": 100})
    with pytest.raises(ParameterError, match="repetitions"):
        TheoremConfig.from_params({**_defaults(), "repetitions": True})
    with pytest.raises(ParameterError, match="effects"):
        TheoremConfig.from_params({**_defaults(), "effects": ["linear"]})
    with pytest.raises(ParameterError, match="output_dir"):
        TheoremConfig.from_params({**_defaults(), "output_dir": ""})
    with pytest.raises(ParameterError, match="interaction_grid"):
        TheoremConfig.from_params({**_defaults(), "interaction_grid": [0.0, -1.0]})


def test_quantile_transfer_within_the_same_setting_recovers_the_target():
    """Sanity check of the wiring: with d1 = d2 the quantile map reproduces the target up to O(1/M)."""
    p = T.random_factorised(seed=0).probs
    src, tgt = p[0, 0, 0], p[1, 0, 0]
    err = {m: np.abs(T.quantile_transfer(src, tgt[None], src[None], n_levels=m) - tgt).sum() for m in (100, 1000)}
    assert err[100] < 0.05 and err[1000] < 0.005
