import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dsalib import metrics
from dsalib.errors import DsaError


def dist(k):
    return arrays(float, k, elements=st.floats(0, 1)).filter(lambda a: a.sum() > 1e-3).map(lambda a: a / a.sum())


def test_wd_respects_option_order():
    # all mass on option 0 vs option 1 vs option 4 of a 5-point scale
    p = np.array([1, 0, 0, 0, 0.0])
    q1 = np.array([0, 1, 0, 0, 0.0])
    q4 = np.array([0, 0, 0, 0, 1.0])
    assert metrics.wd(p, q1)[0] == pytest.approx(1.0)
    assert metrics.wd(p, q4)[0] == pytest.approx(4.0)
    assert metrics.wd_scaled(p, q4)[0] == pytest.approx(1.0)
    # the peer-repo mistake: probability vectors passed as values ignore the order
    wrong1 = scipy.stats.wasserstein_distance(p, q1)
    wrong4 = scipy.stats.wasserstein_distance(p, q4)
    assert wrong1 == pytest.approx(wrong4)  # it cannot tell a neighbour from the far end
    assert metrics.wd(p, q4)[0] != pytest.approx(wrong4)


def test_wd_hand_computed():
    p = np.array([0.5, 0.5, 0.0])
    q = np.array([0.0, 0.5, 0.5])
    # move 0.5 from 0->1 and 0.5 from 1->2: cost 1.0
    assert metrics.wd(p, q)[0] == pytest.approx(1.0)
    assert metrics.wd_scaled(p, q)[0] == pytest.approx(0.5)
    p = np.array([0.2, 0.3, 0.5])
    q = np.array([0.5, 0.3, 0.2])
    # CDF gaps |0.2-0.5| + |0.5-0.8| = 0.6
    assert metrics.wd(p, q)[0] == pytest.approx(0.6)
    # custom positions
    assert metrics.wd(p, q, positions=[0, 2, 4])[0] == pytest.approx(1.2)


@given(dist(6), dist(6))
@settings(max_examples=100, deadline=None)
def test_wd_matches_scipy_with_positions_as_values(p, q):
    pos = np.arange(6.0)
    expected = scipy.stats.wasserstein_distance(pos, pos, u_weights=p, v_weights=q)
    assert metrics.wd(p, q)[0] == pytest.approx(expected, abs=1e-9)


@given(dist(5), dist(5))
@settings(max_examples=100, deadline=None)
def test_jsd_properties(p, q):
    v = metrics.jsd(p, q)[0]
    assert 0 <= v <= np.log(2) + 1e-12
    assert v == pytest.approx(metrics.jsd(q, p)[0], abs=1e-12)
    assert metrics.jsd(p, p)[0] == pytest.approx(0, abs=1e-12)
    # matches scipy's distance squared (natural log)
    ref = scipy.spatial.distance.jensenshannon(p, q) ** 2
    if np.isfinite(ref):  # scipy returns inf when halving a subnormal probability underflows
        assert v == pytest.approx(ref, abs=1e-9)


def test_jsd_of_nearly_equal_rows_with_subnormal_mass_is_zero():
    tiny = 5e-324  # halving it underflows to 0
    p = np.array([1.0, 0, 0, 0, 0])
    q = np.array([1.0, tiny, tiny, tiny, tiny])
    assert metrics.jsd(p, q)[0] == pytest.approx(0.0, abs=1e-12)


def test_jsd_disjoint_is_ln2_and_kl_infinite():
    p = np.array([1.0, 0.0])
    q = np.array([0.0, 1.0])
    assert metrics.jsd(p, q)[0] == pytest.approx(np.log(2))
    assert np.isinf(metrics.kl(p, q)[0])
    assert metrics.kl(p, p)[0] == 0


def test_kl_matches_scipy():
    p = np.array([0.1, 0.2, 0.7])
    q = np.array([0.3, 0.3, 0.4])
    assert metrics.kl(p, q)[0] == pytest.approx(scipy.stats.entropy(p, q))


def test_bad_distributions():
    with pytest.raises(DsaError, match="shapes"):
        metrics.jsd([0.5, 0.5], [1, 0, 0])
    with pytest.raises(DsaError, match="NaN"):
        metrics.wd([np.nan, 1], [0.5, 0.5])


def test_summarize_weighted_and_unweighted():
    import pandas as pd

    df = pd.DataFrame({"n": [10, 30], "jsd": [0.1, 0.3], "wd": [1, 1], "wd_scaled": [0.1, 0.1]})
    s = metrics.summarize(df)
    assert s["jsd_mean"] == pytest.approx(0.2)
    assert s["jsd_wmean"] == pytest.approx(0.25)


def test_better_share():
    assert metrics.better_share([0.1, 0.2, 0.3, 0.4], [0.2, 0.2, 0.2, 0.5]) == 0.5


def test_ts_equivalent_size_and_saving():
    curve = {100: 0.30, 200: 0.20, 400: 0.10}
    assert metrics.ts_equivalent_size(curve, 0.20) == pytest.approx(200)
    assert metrics.ts_equivalent_size(curve, 0.15) == pytest.approx(300)
    assert metrics.ts_equivalent_size(curve, 0.5) == 100
    assert np.isinf(metrics.ts_equivalent_size(curve, 0.05))
    s = metrics.data_saving(curve, 0.15, n_used=100)
    assert s["saving"] == pytest.approx(1 - 100 / 300) and not s["censored"]
    s = metrics.data_saving(curve, 0.05, n_used=100)
    assert s["censored"] and s["saving"] == pytest.approx(0.75)
    with pytest.raises(DsaError):
        metrics.ts_equivalent_size({100: 0.1}, 0.1)


def test_noise_floor_without_an_evaluable_subgroup_is_a_clear_error(ess9):
    from dsalib import baselines, surveys
    from dsalib.errors import DsaError

    truth = surveys.subgroup_table(ess9, "imbgeco", respondents=np.arange(30))
    with pytest.raises(DsaError, match="no subgroup of 'imbgeco' has ≥ 10 respondents"):
        baselines.noise_floor(truth, seed=0, min_size=10)
