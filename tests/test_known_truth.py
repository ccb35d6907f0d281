"""The known-truth check of Phase 2 (dsalib.known_truth) and the Phase 2 options it motivated."""

import numpy as np
import pytest

from dsalib import known_truth as kt
from dsalib import metrics, prompts, quantile, theorem
from dsalib.errors import DsaError, ParameterError
from dsalib.surveys import hamming1_pairs


@pytest.fixture(scope="module")
def sample():
    table = theorem.random_factorised([2, 3, 4], 5, 3, 0.0, 1.0, "ordinal")
    return kt.synthetic_survey(table, 60, 5, imbalance=1.0)


def test_synthetic_survey_draws_from_the_table(sample):
    tr = sample.train
    assert tr.n_subgroups == 24 and tr.n_respondents == 24 * 60
    assert tr.n.min() < 30 < 100 < tr.n.max()  # unequal shares: sizes vary
    # answers follow the truth: the pooled answer shares match the size-weighted truth
    expected = (sample.truth_of(tr.keys) * tr.n[:, None]).sum(0) / tr.n.sum()
    assert np.abs(tr.marginal - expected).max() < 0.05
    # readable prompts
    p = prompts.build_prompt(sample.survey, "redist", tr.keys[0], tr.attributes)
    assert "What is your gender?" in p and "A. Agree strongly" in p


def test_subgroup_sizes_equal_shares_and_bad_input():
    s = kt.subgroup_sizes((2, 3), 100, 0, imbalance=0.0)
    assert s.sum() == 600 and np.abs(s - 100).max() < 45
    with pytest.raises(ParameterError, match="per_subgroup"):
        kt.subgroup_sizes((2, 3), 0, 0)
    with pytest.raises(ParameterError, match="at most"):
        kt.synthetic_survey(theorem.random_factorised([2, 3, 5], 5, 0), 10, 0)


def test_ideal_phase2_with_exact_phase1_and_ratio_operator_recovers_the_truth(sample):
    """With the truth as Phase 1 and Theorem 1's operator, every target is exact: Phase 2 changes nothing."""
    truth = sample.truth_of(sample.train.keys)
    out, plan = kt.ideal_phase2(truth, sample.train, min_pair_size=10, operator="ratio")
    assert len(plan) > 20
    np.testing.assert_allclose(out, truth, atol=1e-12)
    # the paper's quantile operator is biased on the same table
    out_q, _ = kt.ideal_phase2(truth, sample.train, min_pair_size=10, operator="quantile")
    assert metrics.jsd(out_q, truth).mean() > 1e-3


def test_ideal_phase2_changes_only_smaller_subgroups_of_pairs(sample):
    tr = sample.train
    pred = theorem.smooth(tr.counts, 0.5)
    out, plan = kt.ideal_phase2(pred, tr, min_pair_size=40)
    untouched = np.setdiff1d(np.arange(tr.n_subgroups), plan.small)
    np.testing.assert_array_equal(out[untouched], pred[untouched])
    assert np.allclose(out.sum(1), 1)


def test_ratio_targets_beat_the_sample_on_a_factorised_table():
    """The study's claim in miniature: pooled ratio targets reduce the error of small subgroups."""
    gains = []
    for t in range(4):
        r, d = kt.run_case(kt.Case(30, 0.0, t), [2, 3, 4], 5, 1.0, 1.0, methods=("TS", "ideal-P2(TS)"),
                           operator="ratio")
        e = r.set_index("method").jsd_mean
        gains.append(e["TS"] - e["ideal-P2(TS)"])
        assert d["transfer_bias"] < 1e-12
    assert np.mean(gains) > 0.005


def test_run_case_reports_diagnostics_without_a_model():
    r, d = kt.run_case(kt.Case(20, 0.5, 1), [2, 3], 4, 1.0, 1.0, methods=("TS", "MNL", "ideal-P2(TS)"))
    assert set(r.method) == {"TS", "MNL", "ideal-P2(TS)"}
    assert {"pairs", "transfer_bias", "target_jsd_TS", "phase1_jsd_TS", "resolution_truth"} <= set(d)
    with pytest.raises(ParameterError, match="language model"):
        kt.run_case(kt.Case(20, 0.0, 1), [2, 3], 4, 1.0, 1.0, methods=("TS", "TKFT"))
    with pytest.raises(ParameterError, match="unknown method"):
        kt.run_case(kt.Case(20, 0.0, 1), [2, 3], 4, 1.0, 1.0, methods=("TS", "EB-DSA"))


def test_phase2_with_the_tiny_model_reports_targets():
    from dsalib.llm_methods import LanguageModel

    lm = LanguageModel.load("tiny")
    r, d = kt.run_case(kt.Case(40, 0.0, 0), [2, 3], 3, 1.0, 1.0, lm=lm, phase1={"epochs": 2},
                       phase2={"guard": False, "operator": "ratio", "reference": "phase1"}, operator="ratio",
                       methods=("TS", "TKFT", "DSA", "ideal-P2(TKFT)"))
    assert d["dsa_steps"] >= 1 and d["pairs"] == d["dsa_pairs"]
    assert np.isfinite(d["moved_to_target"]) and np.isfinite(d["resolution_DSA"])
    assert r.jsd_mean.notna().all()


def test_phase2_config_rejects_unknown_options():
    from dsalib.train import Phase2Config

    for bad in ({"operator": "mean"}, {"reference": "phase0"}, {"operator_weights": "size"}):
        with pytest.raises(DsaError):
            Phase2Config(**bad).check()


def test_check_params_names_the_bad_value():
    good = dict(seed=0, levels=[2, 3], n_options=3, effect_scale=1.0, imbalance=1.0, per_subgroup=[10],
                interactions=[0.0], n_tables=1, operators=["quantile"], model="tiny", llm_per_subgroup=[],
                llm_interactions=[0.0], llm_tables=1, phase1={}, variants={"DSA": {}}, output_dir="x")
    assert kt.check_params(good)["per_subgroup"] == [10.0]
    for key, value, match in (("per_subgroup", [-5], "per_subgroup"), ("operators", ["mean"], "operators"),
                              ("variants", {"DSA": {"operator": "mean"}}, "variants.DSA"),
                              ("n_options", 7, "options"), ("levels", [2], "levels")):
        with pytest.raises(ParameterError, match=match):
            kt.check_params({**good, key: value})
