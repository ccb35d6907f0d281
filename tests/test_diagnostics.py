"""The spread diagnostic (dsalib.diagnostics): how much a method's predictions tell subgroups apart."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dsalib import experiments, metrics, surveys
from dsalib.baselines import TrainingSample
from dsalib.diagnostics import spread, spread_table
from dsalib.errors import DsaError
from dsalib.experiments import EnhancementConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@st.composite
def dists(draw, min_rows=1):
    g = draw(st.integers(min_rows, 8))
    k = draw(st.integers(2, 6))
    raw = draw(arrays(float, (g, k), elements=st.floats(0.0, 10.0)))
    raw[:, 0] += 1e-3  # every row has mass
    weights = draw(arrays(float, (g,), elements=st.floats(0.01, 100.0)))
    return raw / raw.sum(axis=1, keepdims=True), weights


@settings(max_examples=60, deadline=None)
@given(dists(), st.floats(1e-3, 1e3))
def test_spread_is_bounded_and_invariant_to_the_scale_of_the_weights(pw, scale):
    p, w = pw
    s = spread(p, w)
    assert 0.0 <= s <= np.log(2)
    assert spread(p, scale * w) == pytest.approx(s, rel=1e-9, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(dists())
def test_identical_rows_have_no_spread(pw):
    p, w = pw
    same = np.tile(p[0], (len(p), 1))
    # exactly 0 up to the rounding of the weighted mean
    assert spread(same, w) == pytest.approx(0.0, abs=1e-12)
    assert spread(same) == pytest.approx(0.0, abs=1e-12)


def test_spread_by_hand():
    p = np.array([[1.0, 0.0], [0.0, 1.0]])
    # centre (0.75, 0.25) with weights 3:1; mean of the two JSDs to it
    centre = np.array([[0.75, 0.25]])
    expected = (metrics.jsd(p[:1], centre)[0] + metrics.jsd(p[1:], centre)[0]) / 2
    assert spread(p, [3, 1]) == pytest.approx(expected)
    # two opposite point masses, equal weights: both at JSD(δ, uniform) from the centre
    assert spread(p) == pytest.approx(metrics.jsd([[1.0, 0.0]], [[0.5, 0.5]])[0])


def test_spread_bad_inputs():
    p = np.array([[0.5, 0.5], [0.2, 0.8]])
    with pytest.raises(DsaError, match="shape"):
        spread(p[0])
    with pytest.raises(DsaError, match="sums to"):
        spread(np.array([[0.5, 0.6], [0.2, 0.8]]))
    with pytest.raises(DsaError, match="negative"):
        spread(np.array([[1.5, -0.5], [0.2, 0.8]]))
    with pytest.raises(DsaError, match="one number per row"):
        spread(p, [1.0])
    with pytest.raises(DsaError, match="not all zero"):
        spread(p, [0.0, 0.0])


def _per_subgroup_frame():
    """Hand-made per-subgroup rows for two questions with different numbers of options."""
    frames = []
    for q, truth in (("q3", np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [0.3, 0.3, 0.4]])),
                     ("q2", np.array([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]]))):
        n = np.array([30, 10, 20])
        base = pd.DataFrame({"study": "enhancement", "dataset": "d", "question": q, "seed": 0,
                             "subgroup": ["a", "b", "c"], "n": n})
        floor = experiments.with_distributions(base.assign(method="floor"), truth, "truth")
        flat = experiments.with_distributions(base.assign(method="Flat"), np.tile(truth.mean(0), (3, 1)), "pred")
        exact = experiments.with_distributions(base.assign(method="Exact"), truth[[1, 0, 2]], "pred")
        # rows in another order than the floor's: matched by subgroup
        exact = exact.assign(subgroup=["b", "a", "c"], n=n[[1, 0, 2]])
        frames += [floor, flat, exact]
    return pd.concat(frames, ignore_index=True)


def test_spread_table_on_hand_made_rows():
    table = spread_table(_per_subgroup_frame())
    assert list(table.index) == ["Flat", "Exact"]
    assert table.loc["Flat", "spread"] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(table.loc["Exact", "spread"], table.loc["Exact", "truth_spread"], rtol=1e-12)
    assert table.loc["Exact", "ratio"] == pytest.approx(1.0)
    assert (table["splits"] == 2).all()


def test_spread_table_from_a_stored_study(tmp_path):
    cfg = EnhancementConfig(dataset="ess9", questions=["imbgeco"], n=200, seeds=(0,), methods=("TS",))
    experiments.run_enhancement(cfg, modes=["full", "heldout"], store_root=tmp_path, progress=None)
    per = experiments.load_per_subgroup_modes(cfg, ["full", "heldout"], tmp_path)
    table = spread_table(per)
    assert set(table.index) == {("full", "TS"), ("heldout", "TS")}
    # the truth's spread, recomputed from the split itself
    survey = surveys.load_survey("ess9")
    for mode in ("full", "heldout"):
        split = surveys.enhancement_split(survey, "imbgeco", 200, 0, mode)
        kept = split.truth.n >= cfg.min_eval_size
        expected = spread(split.truth.dist[kept], split.truth.n[kept])
        assert table.loc[(mode, "TS"), "truth_spread"] == pytest.approx(expected, rel=1e-6)
        ts_pred = TrainingSample().fit(split.train).predict(split.truth.keys[kept])
        assert table.loc[(mode, "TS"), "spread"] == pytest.approx(spread(ts_pred, split.truth.n[kept]), rel=1e-6)
    # pooled over modes with by=()
    pooled = spread_table(per, by=())
    assert pooled.loc["TS", "splits"] == 2


def test_spread_table_bad_inputs():
    per = _per_subgroup_frame()
    with pytest.raises(DsaError, match="lack the column"):
        spread_table(per.drop(columns="n"))
    with pytest.raises(DsaError, match="pred_0"):
        spread_table(per[[c for c in per.columns if not c.startswith("pred_")]])
    with pytest.raises(DsaError, match="no 'floor' rows"):
        spread_table(per[per.method != "floor"])
