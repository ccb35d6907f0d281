"""dsalib.efficiency: TS-equivalent sizes, savings, size bins and absent subgroups (real ESS9 data and properties)."""

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsalib import baselines, efficiency, experiments, metrics, surveys
from dsalib.errors import ParameterError
from dsalib.experiments import EnhancementConfig

CURVE = {100: 0.30, 200: 0.20, 400: 0.10}


# --------------------------------------------------------------------------
# TS-equivalent size and saving
# --------------------------------------------------------------------------


def test_equivalent_interpolates_hand_computed():
    out = efficiency.equivalent(CURVE, 0.15, 150)
    assert out["status"] == efficiency.WITHIN
    assert out["ts_equivalent_n"] == pytest.approx(300.0)  # halfway between 200 (0.20) and 400 (0.10)
    assert out["saving"] == pytest.approx(0.5)  # 1 - 150 / 300
    assert out["bound"] == out["ts_equivalent_n"] and out["saving_bound"] == out["saving"]
    # exactly the first grid point is inside the grid
    first = efficiency.equivalent(CURVE, 0.30, 100)
    assert first["status"] == efficiency.WITHIN and first["ts_equivalent_n"] == 100 and first["saving"] == 0


def test_equivalent_beyond_grid_is_a_labelled_lower_bound():
    out = efficiency.equivalent(CURVE, 0.05, 100)
    assert out["status"] == efficiency.BEYOND
    assert math.isnan(out["ts_equivalent_n"]) and math.isnan(out["saving"])  # no extrapolated value
    assert out["bound"] == 400 and out["saving_bound"] == pytest.approx(0.75)
    assert efficiency.describe_equivalent(out) == ("> 400", "> 75.0%")


def test_equivalent_below_grid_is_a_labelled_upper_bound():
    out = efficiency.equivalent(CURVE, 0.35, 200)
    assert out["status"] == efficiency.BELOW
    assert math.isnan(out["ts_equivalent_n"]) and math.isnan(out["saving"])
    assert out["bound"] == 100 and out["saving_bound"] == pytest.approx(-1.0)  # 1 - 200 / 100
    assert efficiency.describe_equivalent(out) == ("< 100", "none (worse than TS)")
    # metrics.data_saving alone would call this an exact size of 100 (the case this module labels)
    assert metrics.data_saving(CURVE, 0.35, 200)["ts_equivalent_n"] == 100


def test_equivalent_non_monotone_curve_uses_the_running_minimum():
    # TS with the marginal fallback can get worse with more data (sparse subgroups): 50 < 100 < 200 in error
    curve = {50: 0.25, 100: 0.28, 200: 0.30, 400: 0.20}
    assert efficiency.equivalent(curve, 0.26, 100)["status"] == efficiency.BELOW
    out = efficiency.equivalent(curve, 0.22, 100)  # running minimum 0.25 at 200, 0.20 at 400
    assert out["ts_equivalent_n"] == pytest.approx(200 + (0.25 - 0.22) / 0.05 * 200)


def test_equivalent_rejects_non_finite_error():
    with pytest.raises(ParameterError, match="non-finite"):
        efficiency.equivalent(CURVE, float("nan"), 100)


@st.composite
def decreasing_curves(draw):
    sizes = sorted(draw(st.sets(st.integers(10, 5000), min_size=2, max_size=8)))
    steps = draw(st.lists(st.floats(1e-4, 0.1), min_size=len(sizes), max_size=len(sizes)))
    errs = np.cumsum(steps[::-1])[::-1]  # strictly decreasing, positive
    return dict(zip(sizes, errs.tolist()))


@given(decreasing_curves(), st.data())
@settings(max_examples=150, deadline=None)
def test_equivalent_properties(curve, data):
    sizes = sorted(curve)
    # a grid point's own error maps back to that size, and TS at that size saves nothing
    s = data.draw(st.sampled_from(sizes))
    own = efficiency.equivalent(curve, curve[s], s)
    assert own["status"] == efficiency.WITHIN
    assert own["ts_equivalent_n"] == pytest.approx(s, rel=1e-9, abs=1e-6)
    assert own["saving"] == pytest.approx(0.0, abs=1e-9)
    # lower error never needs fewer TS respondents; inside the grid the size lies between its ends
    e1, e2 = sorted(data.draw(st.lists(st.floats(0, 1.5 * curve[sizes[0]]), min_size=2, max_size=2)))
    a, b = efficiency.equivalent(curve, e1, 100), efficiency.equivalent(curve, e2, 100)
    for out, e in ((a, e1), (b, e2)):
        if out["status"] == efficiency.WITHIN:
            assert sizes[0] - 1e-9 <= out["ts_equivalent_n"] <= sizes[-1] + 1e-9
            assert out["saving"] == pytest.approx(1 - 100 / out["ts_equivalent_n"])
        elif out["status"] == efficiency.BEYOND:
            assert e < curve[sizes[-1]] and out["bound"] == sizes[-1]
        else:
            assert e > curve[sizes[0]] and out["bound"] == sizes[0]
    order = {efficiency.BELOW: 0, efficiency.WITHIN: 1, efficiency.BEYOND: 2}
    assert order[a["status"]] >= order[b["status"]]
    if a["status"] == b["status"] == efficiency.WITHIN:
        assert a["ts_equivalent_n"] >= b["ts_equivalent_n"] - 1e-9


def _rows(method, question, seeds, errors, n=100, mode="full"):
    return [{"truth_mode": mode, "method": method, "question": question, "seed": s, "n": n, "jsd_mean": e}
            for s, e in zip(seeds, errors)]


def test_equivalent_sizes_weights_questions_equally_and_matches_questions():
    # TS grid: q1 is hard (0.4 -> 0.2), q2 easy (0.2 -> 0.1); 4 samples each
    ts = pd.DataFrame(
        _rows("TS", "q1", range(4), [0.4] * 4, 100) + _rows("TS", "q1", range(4), [0.2] * 4, 300)
        + _rows("TS", "q2", range(4), [0.2] * 4, 100) + _rows("TS", "q2", range(4), [0.1] * 4, 300))
    # method on q1 only (3 samples): compared with the q1 curve, not the pooled one
    only_q1 = pd.DataFrame(_rows("DSA", "q1", range(3), [0.3, 0.3, 0.3], 100))
    row = efficiency.equivalent_sizes(only_q1, ts).iloc[0]
    assert row.ts_equivalent_n == pytest.approx(200.0)  # q1 curve: 0.3 halfway between 100 and 300
    assert row.saving == pytest.approx(0.5) and row.questions == "q1" and row.samples == 3
    # unbalanced samples: mean over samples per question first (q1: 0.3, q2: 0.15), then over questions
    both = pd.DataFrame(_rows("DSA", "q1", range(3), [0.3] * 3) + _rows("DSA", "q2", [0], [0.15]))
    row = efficiency.equivalent_sizes(both, ts).iloc[0]
    assert row.error == pytest.approx(0.225)  # not the pooled row mean (0.2625)
    assert row.ts_equivalent_n == pytest.approx(200.0)  # pooled curve 0.3 -> 0.15
    # the floor gets a size but no saving
    floor = pd.DataFrame(_rows("floor", "q1", [0], [0.25]))
    row = efficiency.equivalent_sizes(floor, ts).iloc[0]
    assert row.ts_equivalent_n == pytest.approx(250.0) and math.isnan(row.saving)
    # a question the TS grid lacks is an error, not a silent comparison with other questions
    with pytest.raises(ParameterError, match="q3"):
        efficiency.equivalent_sizes(pd.DataFrame(_rows("DSA", "q3", [0], [0.3])), ts)


def test_ts_curve_columns_and_errors():
    ts = pd.DataFrame(_rows("TS", "q1", range(3), [0.3, 0.4, 0.5], 100) + _rows("TS", "q1", range(3), [0.2] * 3, 200)
                      + _rows("MNL", "q1", [0], [0.0], 100))
    c = efficiency.ts_curve(ts)
    assert list(c.n) == [100, 200] and c.error.tolist() == pytest.approx([0.4, 0.2])
    assert c.seed_sd.iloc[0] == pytest.approx(0.1) and c.samples.tolist() == [3, 3]
    with pytest.raises(ParameterError, match="metric"):
        efficiency.ts_curve(ts, metric="kl")
    with pytest.raises(ParameterError, match="no TS results"):
        efficiency.ts_curve(ts, questions=["q9"])


# --------------------------------------------------------------------------
# Parameter checks on the real ESS9 extract
# --------------------------------------------------------------------------


def test_check_sizes_against_real_data(ess9):
    attrs = ess9.check_background(None)
    eligible = len(ess9.eligible("lrscale", attrs))
    assert efficiency.check_sizes(ess9, ["imbgeco", "lrscale"], None, [300, 100], ["full"], 10) == [100, 300]
    assert efficiency.check_sizes(ess9, ["lrscale"], None, [eligible], ["full"], 10) == [eligible]
    left = int(np.ceil(efficiency.HELDOUT_SHARE * eligible))
    with pytest.raises(ParameterError, match=rf"lrscale.*{eligible} respondents.*leave {left} \(25%\)"):
        efficiency.check_sizes(ess9, ["lrscale"], None, [eligible - left + 1], ["full", "heldout"], 10)
    assert efficiency.check_sizes(ess9, ["lrscale"], None, [eligible - left], ["full", "heldout"], 10) == [eligible - left]
    with pytest.raises(ParameterError, match="too large"):
        efficiency.check_sizes(ess9, ["imbgeco"], None, [100, 100000], ["full"], 10, "ts_sizes")
    with pytest.raises(ParameterError, match="twice"):
        efficiency.check_sizes(ess9, ["imbgeco"], None, [100, 100], ["full"])
    with pytest.raises(ParameterError, match="positive integers"):
        efficiency.check_sizes(ess9, ["imbgeco"], None, [100, True], ["full"])
    with pytest.raises(ParameterError, match="at least 2"):
        efficiency.check_sizes(ess9, ["imbgeco"], None, [100], ["full"], at_least=2)


def test_other_parameter_checks():  # methods, modes and seeds are checked by dsalib.config (tests/test_config.py)
    assert efficiency.check_metric("wd_scaled_mean") == "wd_scaled_mean"


# --------------------------------------------------------------------------
# Size bins
# --------------------------------------------------------------------------


def test_size_bins_hand_checked():
    edges = [10, 20, 50, 100]
    assert efficiency.size_bin_labels(edges) == ["10-19", "20-49", "50-99", "100+"]
    got = efficiency.size_bins([5, 10, 19, 20, 99, 100, 5000], edges)
    assert [None if pd.isna(x) else x for x in got] == [None, "10-19", "10-19", "20-49", "50-99", "100+", "100+"]
    assert efficiency.size_bin_labels([10, 11]) == ["10", "11+"]
    for bad in ([20, 10], [10, 10], [0, 5], "10"):
        with pytest.raises(ParameterError, match="size_bins"):
            efficiency.size_bins([10], bad)


@given(st.lists(st.integers(1, 500), min_size=1, max_size=6, unique=True), st.integers(1, 2000))
@settings(max_examples=200, deadline=None)
def test_size_bins_property(edges, n):
    edges = sorted(edges)
    label = efficiency.size_bins([n], edges)[0]
    if n < edges[0]:
        assert pd.isna(label)
    else:
        i = efficiency.size_bin_labels(edges).index(label)
        upper = edges[i + 1] if i + 1 < len(edges) else math.inf
        assert edges[i] <= n < upper


# --------------------------------------------------------------------------
# The protocol at several sizes and the absent subgroups, on the real ESS9 extract
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ts_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    cfg = EnhancementConfig(dataset="ess9", questions=("imbgeco",), n=100, seeds=(0, 1), methods=("TS",),
                            model="tiny")
    res = efficiency.run_sizes(cfg, [60, 200], ["full", "heldout"], root, progress=None)
    return cfg, root, res


def test_run_sizes_matches_a_direct_computation_and_reads_back(ts_runs, ess9):
    cfg, root, res = ts_runs
    assert set(res.n) == {60, 200} and set(res.method) == {"TS", "floor"} and set(res.truth_mode) == {"full", "heldout"}
    assert len(res) == 2 * 2 * 2 * 2  # sizes x modes x seeds x (TS, floor)
    for mode in ("full", "heldout"):
        split = surveys.enhancement_split(ess9, "imbgeco", 200, 1, mode)
        pred = baselines.TrainingSample().fit(split.train).predict(split.truth.keys)
        direct = metrics.summarize(metrics.evaluate(pred, split.truth, 10))["jsd_mean"]
        got = res[(res.n == 200) & (res.seed == 1) & (res.method == "TS") & (res.truth_mode == mode)].jsd_mean
        assert got.item() == pytest.approx(direct, abs=1e-12)
    files = sorted(p.name for p in root.rglob("*.json"))
    again = efficiency.run_sizes(cfg, [200, 60], ["full", "heldout"], root, progress=None)
    assert sorted(p.name for p in root.rglob("*.json")) == files  # nothing recomputed or added
    pd.testing.assert_frame_equal(again.sort_values(list(again.columns[:6])).reset_index(drop=True),
                                  res.sort_values(list(res.columns[:6])).reset_index(drop=True))
    # the store of each size is the shared one of that configuration
    assert (experiments.store_dir_for(EnhancementConfig(**{**cfg.__dict__, "n": 60}), "heldout", root)).exists()


def test_absent_subgroups_on_real_data(ts_runs, ess9):
    cfg, root, _ = ts_runs
    per = experiments.load_per_subgroup_modes(EnhancementConfig(**{**cfg.__dict__, "n": 60}), ["full", "heldout"], root)
    df = efficiency.with_presence(per)
    assert not df.train_n.isna().any() and (df.absent == (df.train_n == 0)).all()
    assert df.absent.any() and (~df.absent).any()  # 60 respondents leave some subgroups empty
    split = surveys.enhancement_split(ess9, "imbgeco", 60, 0, "full")
    d = df[(df.truth_mode == "full") & (df.seed == 0) & (df.method == "TS")]
    labels = split.truth.subgroup_labels()
    kept = split.truth.n >= 10
    _, train_n = split.train.lookup(split.truth.keys[kept])
    expect = dict(zip(np.array(labels, dtype=object)[kept], train_n))
    assert dict(zip(d.subgroup, d.train_n)) == expect  # train_n counted independently from the split
    # TS predicts the pooled training distribution for an absent subgroup
    pred_cols = sorted([c for c in d.columns if c.startswith("pred_")], key=lambda c: int(c.split("_")[1]))
    for _, row in d[d.absent].iterrows():
        assert row[pred_cols].to_numpy(float) == pytest.approx(split.train.marginal)
    ts_rows = df[df.method == "TS"]
    assert (ts_rows.ts_jsd == ts_rows.jsd).all() and (ts_rows.better_than_ts == 0).all()

    summary = efficiency.subgroup_summary(df, edges=[10, 30, 100])
    for (mode, method), grp in df.groupby(["truth_mode", "method"]):
        s = summary[(summary.truth_mode == mode) & (summary.method == method)]
        assert s.evaluations.sum() == len(grp)
        assert (s.jsd_mean * s.evaluations).sum() / len(grp) == pytest.approx(grp.jsd.mean())
    assert list(summary.method.unique()) == ["TS", "floor"]
    counts = efficiency.absent_counts(df)
    floor = df[df.method == "floor"]
    assert counts.loc["full", "evaluations"] == (floor.truth_mode == "full").sum()
    assert counts.loc["full", "absent"] == (floor[floor.truth_mode == "full"].absent).sum()


def test_with_presence_needs_floor_rows():
    per = pd.DataFrame({"truth_mode": ["full"], "question": ["q"], "seed": [0], "subgroup": ["a"], "method": ["TS"],
                        "n": [12], "jsd": [0.1]})
    with pytest.raises(ParameterError, match="noise-floor"):
        efficiency.with_presence(per)
    with pytest.raises(ParameterError, match="no per-subgroup"):
        efficiency.with_presence(per.iloc[:0])


def test_curve_rises():
    curve = pd.DataFrame({"truth_mode": ["full"] * 4 + ["heldout"] * 2, "n": [50, 100, 200, 400, 50, 100],
                          "error": [0.25, 0.28, 0.24, 0.26, 0.3, 0.2]})
    r = efficiency.curve_rises(curve)
    assert r[["n_from", "n_to"]].values.tolist() == [[50, 100], [200, 400]]
    assert r.rise.tolist() == pytest.approx([0.03, 0.02]) and set(r.truth_mode) == {"full"}


@pytest.mark.parametrize("study", ["data_efficiency", "unseen_backgrounds"])
def test_reference_params_reuse_the_enhancement_stores(study):
    """The reference size of both studies is the enhancement configuration, so its stored results are read back."""
    import yaml

    from dsalib.notebook_params import declared_parameters

    root = surveys.REPO_ROOT / "params"
    shared = set(declared_parameters("enhancement")) - {"output_dir", "prefix_cache", "store_root"}
    assert shared <= set(declared_parameters(study))
    files = sorted((root / study).glob("*.yaml"))
    # every dataset of a reference Enhancement run has its run here (a variant such as ess10no_weighted, which
    # changes only the weighting, is covered by its dataset's run)
    datasets = {yaml.safe_load(p.read_text())["dataset"] for p in (root / "enhancement").glob("*.yaml")}
    assert {f.stem for f in files} >= datasets
    for f in files:
        enh_file = root / "enhancement" / f.name
        if not enh_file.exists():
            continue
        mine = yaml.safe_load(f.read_text())
        enh = yaml.safe_load(enh_file.read_text())
        assert {k: v for k, v in mine.items() if k in shared} == enh, f"{f} differs from {enh_file}"


def test_pending_count_and_stored_option_rule(ts_runs):
    cfg, root, res = ts_runs
    cfg = EnhancementConfig(**{**cfg.__dict__, "n": 200})  # a size run_sizes stored
    assert efficiency.pending_count(cfg, ["full", "heldout"], root) == 0  # stored: nothing to compute
    more = EnhancementConfig(**{**cfg.__dict__, "seeds": (0, 1, 2)})
    assert efficiency.pending_count(more, ["full", "heldout"], root) == 2 * 2  # seed 2: TS and floor, two modes
    assert efficiency.pending_count(EnhancementConfig(**{**cfg.__dict__, "n": 77}), ["full"], root) == 4
    assert efficiency.stored_option_rule(res) is None  # TS and floor need no language model
    assert efficiency.stored_option_rule(pd.DataFrame({"option_rule": [None, {"rule": "x"}]})) == {"rule": "x"}


def test_absent_sentence():
    counts = pd.DataFrame({"evaluations": [40, 30], "absent": [4, 0], "absent_share": [0.1, 0.0],
                           "absent_distinct_subgroups": [3, 0], "truth_n_of_absent_median": [12.0, np.nan],
                           "truth_n_of_absent_max": [15, 0]}, index=pd.Index(["full", "heldout"], name="truth_mode"))
    summary = pd.DataFrame({"truth_mode": ["full"] * 3, "method": ["TS", "DSA", "floor"],
                            "presence": ["absent from training"] * 3, "jsd_mean": [0.2, 0.1, 0.05],
                            "better_than_ts": [0.0, 0.75, np.nan]})
    text = efficiency.absent_sentence(counts, summary, "full", ["TS", "DSA", "floor"], min_absent=4)
    assert text.startswith("4 of 40 subgroup evaluations (10.0%, 3 distinct subgroups, median truth size 12)")
    assert text.endswith("TS 0.200, DSA 0.100 (noise floor 0.050).")
    few = efficiency.absent_sentence(counts, summary, "full", ["TS", "DSA", "floor"], min_absent=5)
    assert "too few (under 5)" in few and "0.100" not in few  # no method compared on 4 evaluations
    assert efficiency.absent_sentence(counts, summary, "heldout", ["TS"]).startswith("None of the 30")


def test_unseen_backgrounds_small_n_reuses_the_data_efficiency_runs():
    import yaml

    root = surveys.REPO_ROOT / "params"
    ub = yaml.safe_load((root / "unseen_backgrounds" / "ess9_n100.yaml").read_text())
    de = yaml.safe_load((root / "data_efficiency" / "ess9.yaml").read_text())
    assert ub["n"] in de["curve_sizes"] and ub["questions"] == de["curve_questions"]
    assert ub["seeds"] == de["curve_seeds"] and ub["methods"] == de["curve_methods"]
    assert all(ub.get(k) == de.get(k) for k in ("dataset", "background", "modes", "model", "phase1", "phase2",
                                                 "template", "strategy", "min_eval_size"))
