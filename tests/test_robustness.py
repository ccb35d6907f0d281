"""dsalib.robustness: better-than-TS shares, pairwise prompt consistency, ablation tables."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsalib import experiments, metrics, robustness
from dsalib.errors import DsaError
from dsalib.experiments import EnhancementConfig


def _per(errors: dict, questions=("q",), seeds=(0,), mode="full"):
    """Per-subgroup rows: errors[method] is an array (questions x seeds x subgroups)."""
    rows = []
    for m, arr in errors.items():
        arr = np.asarray(arr, dtype=float).reshape(len(questions), len(seeds), -1)
        for qi, q in enumerate(questions):
            for si, s in enumerate(seeds):
                for g, v in enumerate(arr[qi, si]):
                    rows.append({"truth_mode": mode, "question": q, "seed": s, "method": m,
                                 "subgroup": f"g{g}", "jsd": v})
    return pd.DataFrame(rows)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 0.7), st.floats(0, 0.7)), min_size=1, max_size=30))
def test_better_than_reference_matches_better_share(pairs):
    a, b = np.array(pairs).T
    per = _per({"TS": b, "DSA": a})
    out = robustness.better_than_reference(per, ["DSA"])
    assert len(out) == 1
    row = out.iloc[0]
    assert row.share == pytest.approx(metrics.better_share(a, b))
    assert row.better == int((a < b).sum()) and row.subgroups == len(a)
    # the reverse comparison: strict wins of each side never add up to more than all subgroups
    rev = robustness.better_than_reference(_per({"TS": a, "DSA": b}), ["DSA"]).iloc[0]
    assert row.better + rev.better + int((a == b).sum()) == len(a)


def test_pool_shares_pools_subgroups_not_runs():
    per = _per({"TS": [[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]],
                "DSA": [[0.1, 0.1, 0.1, 0.1], [0.9, 0.9, 0.9, 0.1]]}, seeds=(0, 1))
    shares = robustness.better_than_reference(per, ["DSA"])
    assert sorted(shares.share) == [0.25, 1.0]
    pooled = robustness.pool_shares(shares).iloc[0]
    assert pooled.share == pytest.approx(5 / 8) and pooled.runs == 2
    assert pooled.share_min == 0.25 and pooled.share_max == 1.0


def test_better_than_reference_rejects_mismatched_subgroups():
    per = _per({"TS": [0.2, 0.3, 0.4], "DSA": [0.1, 0.1, 0.1]})
    with pytest.raises(DsaError, match="different subgroups"):
        robustness.better_than_reference(per.drop(index=per.index[-1]), ["DSA"])
    with pytest.raises(DsaError, match="no 'TS' rows"):
        robustness.better_than_reference(per[per.method == "DSA"], ["DSA"])
    with pytest.raises(DsaError, match="AAE"):
        robustness.better_than_reference(per, ["AAE"])


def _pred_rows(preds: dict, question="q", seed=0):
    """preds[(template, method)] = array subgroups x K."""
    rows = []
    for (t, m), arr in preds.items():
        for g, p in enumerate(np.asarray(arr, float)):
            rows.append({"template": t, "method": m, "question": question, "seed": seed, "subgroup": f"g{g}",
                         **{f"pred_{i}": v for i, v in enumerate(p)}})
    return pd.DataFrame(rows)


dists = st.lists(st.floats(0.01, 1), min_size=2, max_size=6).map(lambda v: np.array(v) / np.sum(v))


@settings(max_examples=40, deadline=None)
@given(st.lists(dists, min_size=2, max_size=4), st.data())
def test_pairwise_jsd_is_mean_over_template_pairs(per_template, data):
    k = len(per_template[0])
    per_template = [p if len(p) == k else np.full(k, 1 / k) for p in per_template]
    templates = [f"t{i}" for i in range(len(per_template))]
    per = _pred_rows({(t, "M"): [p] for t, p in zip(templates, per_template)})
    out = robustness.pairwise_template_jsd(per, templates)
    expect = np.mean([metrics.jsd(per_template[a], per_template[b])[0]
                      for a in range(len(templates)) for b in range(a + 1, len(templates))])
    assert out.pairwise_jsd.iloc[0] == pytest.approx(expect, abs=1e-12)
    assert out.max_pair_jsd.iloc[0] >= out.pairwise_jsd.iloc[0] - 1e-15
    # the order of the templates does not matter
    perm = data.draw(st.permutations(templates))
    assert robustness.pairwise_template_jsd(per, perm).pairwise_jsd.iloc[0] == pytest.approx(expect, abs=1e-12)


def test_pairwise_identical_predictions_are_zero_and_mixed_option_counts_work():
    p3 = np.array([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])
    a = _pred_rows({("default", "TS"): p3, ("para1", "TS"): p3}, question="three")
    p2 = np.array([[0.5, 0.5]])
    b = _pred_rows({("default", "TS"): p2, ("para1", "TS"): np.array([[0.9, 0.1]])}, question="two")
    out = robustness.pairwise_template_jsd(pd.concat([a, b], ignore_index=True))
    by_q = out.groupby("question").pairwise_jsd.max()
    assert by_q["three"] == 0.0
    assert by_q["two"] == pytest.approx(metrics.jsd([0.5, 0.5], [0.9, 0.1])[0])
    summary = robustness.consistency_summary(out)
    assert summary.pairwise_jsd_x100.iloc[0] == pytest.approx(100 * out.pairwise_jsd.mean())


def test_pairwise_errors_are_clear():
    p = np.array([[0.5, 0.5], [0.2, 0.8]])
    per = _pred_rows({("default", "M"): p, ("para1", "M"): p})
    with pytest.raises(DsaError, match="at least two"):
        robustness.pairwise_template_jsd(per, ["default"])
    with pytest.raises(DsaError, match="no predictions under template 'para2'"):
        robustness.pairwise_template_jsd(per, ["default", "para1", "para2"])
    with pytest.raises(DsaError, match="different subgroups"):
        robustness.pairwise_template_jsd(per.iloc[:-1])


def _res(method_vals: dict, settings_: dict, questions=("a", "b"), seeds=(0, 1)):
    rows = []
    for m, v in method_vals.items():
        for i, (q, s) in enumerate([(q, s) for q in questions for s in seeds]):
            rows.append({"truth_mode": "full", "question": q, "seed": s, "method": m,
                         "wd_scaled_mean": v + 0.01 * i, "wd_mean": 10 * v, "jsd_mean": v / 2, **settings_})
    return pd.DataFrame(rows)


def test_ablation_summary_and_coverage_check():
    a = _res({"TKFT": 0.2, "DSA": 0.1}, {"strategy": "last_layer"})
    b = _res({"TKFT": 0.3, "DSA": 0.25}, {"strategy": "lora"})
    s = robustness.ablation_summary(pd.concat([a, b]), ["strategy"])
    assert set(s.phase) == {"1", "1+2"} and (s.runs == 4).all()
    row = s[(s.strategy == "lora") & (s.method == "DSA")].iloc[0]
    assert row.wd_scaled_mean == pytest.approx(0.25 + 0.015)
    with pytest.raises(DsaError, match="different \\(question, seed\\) runs"):
        robustness.ablation_summary(pd.concat([a, b.iloc[:-1]]), ["strategy"])
    d = robustness.paired_difference(a, "DSA", "TKFT").iloc[0]
    assert d.mean_diff == pytest.approx(-0.1) and d.lower_share == 1.0 and d.runs == 4
    with pytest.raises(DsaError, match="no run"):
        robustness.paired_difference(a, "DSA", "AAE")


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Direct and DSA with the tiny model on real ESS9 data under two templates."""
    from dsalib.llm_methods import LanguageModel

    root = tmp_path_factory.mktemp("stores")
    lm = LanguageModel.load("tiny")
    out = {}
    for t in ("default", "para3"):
        cfg = EnhancementConfig(dataset="ess9", questions=["imbgeco"], n=200, seeds=(0,), model="tiny",
                                methods=("TS", "Direct", "DSA"), phase1={"epochs": 1, "lr": 1e-3},
                                phase2={"min_pair_size": 3, "lr": 1e-3}, template=t)
        res = experiments.run_enhancement(cfg, lm=lm, modes=["full"], store_root=root, progress=None)
        per = experiments.load_per_subgroup_modes(cfg, ["full"], root)
        per["template"] = t
        out[t] = (res, per)
    return out


def test_on_real_runs(tiny_runs):
    res, per = tiny_runs["default"]
    shares = robustness.better_than_reference(per, ["Direct", "DSA", "floor"])
    assert set(shares.method) == {"Direct", "DSA", "floor"}
    assert shares.share.between(0, 1).all() and (shares.subgroups == per[per.method == "TS"].shape[0]).all()
    both = pd.concat([tiny_runs["default"][1], tiny_runs["para3"][1]], ignore_index=True)
    pw = robustness.pairwise_template_jsd(both, ["default", "para3"], ["Direct", "DSA", "TS"])
    means = pw.groupby("method").pairwise_jsd.mean()
    assert means["TS"] == 0.0  # TS does not read prompts
    assert means["Direct"] > 0  # the tiny model reads the two wordings differently
    assert np.isfinite(pw.pairwise_jsd).all() and (pw.pairwise_jsd <= np.log(2)).all()
    rep = robustness.phase2_reports(res)
    assert len(rep) == 1 and rep.phase2_pairs.iloc[0] > 0 and rep.phase1_epochs.iloc[0] == 1
    assert rep.phase2_outcome.iloc[0] in ("run", "skipped", "rejected")
    errs = robustness.template_errors(pd.concat([tiny_runs["default"][0], tiny_runs["para3"][0]]))
    assert list(errs.columns) == ["default", "para3"]
    assert errs.loc[("full", "TS"), "default"] == pytest.approx(errs.loc[("full", "TS"), "para3"])


def test_check_model_names(tmp_path, monkeypatch):
    from dsalib.errors import ParameterError

    assert robustness.check_model_names(["smollm2-135m", "gemma3-270m", "tiny", str(tmp_path)]) == \
        ["smollm2-135m", "gemma3-270m", "tiny", str(tmp_path)]
    with pytest.raises(ParameterError, match="not an existing local folder"):
        robustness.check_model_names([str(tmp_path / "missing")])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ParameterError, match="local Hugging Face cache"):
        robustness.check_model_names(["no-such-owner/no-such-model-xyz"])
    with pytest.raises(ParameterError, match="list of model names"):
        robustness.check_model_names("smollm2-135m")


# --------------------------------------------------------------------------
# The study's runs over training sizes and templates (moved out of the notebook)
# --------------------------------------------------------------------------


def test_run_training_sizes_matches_one_run_per_size_and_reads_back(tmp_path):
    from dsalib.config import RobustnessConfig

    cfg = RobustnessConfig(dataset="ess9", questions=["imbgeco"], n=200, seeds=[0], methods=["MNL"], sizes=[60],
                           modes=["full", "heldout"], model="tiny", prompt_methods=[])
    res, per = robustness.run_training_sizes(cfg, [200, 60, 200], store_root=tmp_path, progress=None)
    assert list(dict.fromkeys(res.train_size)) == [200, 60]  # repeated sizes run once, in order
    assert set(res.method) == {"TS", "MNL", "floor"} and set(per.train_size) == {200, 60}
    for size in (200, 60):
        c = cfg.run_config(n=size)
        direct = experiments.run_enhancement(c, store_root=tmp_path, progress=None)
        got = res[res.train_size == size].drop(columns="train_size")
        key = ["truth_mode", "question", "seed", "method"]
        pd.testing.assert_frame_equal(got.sort_values(key).reset_index(drop=True)[direct.columns],
                                      direct.sort_values(key).reset_index(drop=True), check_dtype=False)
        direct_per = experiments.load_per_subgroup_modes(c, store_root=tmp_path)
        assert len(per[per.train_size == size]) == len(direct_per) > 0
    shares = robustness.better_than_reference(per, ["MNL", "floor"], group=["train_size", "truth_mode", "question", "seed"])
    assert set(shares.train_size) == {200, 60}
    with pytest.raises(DsaError, match="no training sizes"):
        robustness.run_training_sizes(cfg, [], store_root=tmp_path, progress=None)
    with pytest.raises(DsaError, match="positive"):
        robustness.run_training_sizes(cfg, [0], store_root=tmp_path, progress=None)


def test_run_templates_tags_each_template(tmp_path):
    from dsalib.config import RobustnessConfig

    cfg = RobustnessConfig(dataset="ess9", questions=["imbgeco"], n=150, seeds=[0], methods=["MNL"], model="tiny",
                           prompt_methods=[])
    cfgs = {t: cfg.run_config(methods=[], template=t) for t in ("default", "para1")}
    res, per = robustness.run_templates(cfgs, "full", store_root=tmp_path, progress=None)
    assert set(res.template) == {"default", "para1"} and set(res.truth_mode) == {"full"}
    assert set(per.template) == {"default", "para1"}
    pairwise = robustness.pairwise_template_jsd(per, ["default", "para1"], ["TS"])
    assert np.allclose(pairwise.pairwise_jsd, 0.0)  # TS reads no prompt
    with pytest.raises(DsaError, match="no templates"):
        robustness.run_templates({}, "full", store_root=tmp_path)


def test_better_sentence_ranks_methods_and_states_the_floor():
    pooled = pd.DataFrame({"truth_mode": ["full"] * 3 + ["heldout"], "method": ["TKFT", "DSA", "floor", "DSA"],
                           "share": [0.25, 0.5, 0.75, 0.1], "subgroups": [40, 40, 40, 40], "better": [10, 20, 30, 4]})
    text = robustness.better_sentence(pooled, "full", ["TKFT", "DSA"])
    assert text.index("`DSA` on 50.0%") < text.index("`TKFT` on 25.0%")
    assert "40 evaluated subgroups" in text and "noise floor) is closer on 75.0%" in text
    assert "noise floor" not in robustness.better_sentence(pooled, "heldout", ["DSA"])
    with pytest.raises(DsaError, match="AAE"):
        robustness.better_sentence(pooled, "full", ["AAE"])


def test_head_to_head_counts_paired_runs_once():
    rows = []
    for part in ("phase", "selected"):  # the same fit counted by two parts counts once
        for seed, (dsa, tkft) in enumerate([(0.2, 0.1), (0.1, 0.1), (0.05, 0.1)]):
            for m, v in (("DSA", dsa), ("TKFT", tkft)):
                rows.append({"part": part, "model": "tiny", "strategy": "last_layer", "epochs": "selected",
                             "truth_mode": "full", "question": "q", "seed": seed, "method": m,
                             "wd_scaled_mean": v, "jsd_mean": v + 1})
    h = robustness.head_to_head(pd.DataFrame(rows))
    wd = h[h.metric == "wd_scaled_mean"].iloc[0]
    assert (wd.lower, wd.ties, wd.runs) == (1, 1, 3)
    assert wd.mean_diff == pytest.approx((0.1 + 0 - 0.05) / 3)
    text = robustness.head_to_head_sentence(h)
    assert "in 1 of 3 runs, tied in 1" in text and "full data" in text
    never = robustness.head_to_head_sentence(h.assign(lower=0, ties=0))
    assert "never (of 3)" in never
    with pytest.raises(DsaError, match="share no fitted run"):
        robustness.head_to_head(pd.DataFrame(rows).query("method == 'DSA'"))


def test_run_ablations_labels_every_part_and_reuses_the_default_rows(tmp_path):
    from dsalib.config import AblationsConfig

    cfg = AblationsConfig(dataset="ess9", questions=["imbgeco"], n=150, seeds=[0], modes=["full"], model="tiny",
                          models=["tiny"], strategies=["last_layer"], strategy_methods=["TKFT"], fixed_epochs=1,
                          phase1={"lr": 1e-3, "max_epochs": 1}, phase2={"min_pair_size": 3},
                          subset_questions=["imbgeco"], subset_seeds=[0], prefix_cache=None)
    loaded = []

    def load(name):
        from dsalib.llm_methods import LanguageModel

        loaded.append(name)
        return LanguageModel.load(name)

    runs, rules, phase = robustness.run_ablations(cfg, store_root=tmp_path, load_model=load, progress=None)
    assert loaded == ["tiny"] and set(rules) == {"tiny"}  # the study's own model is loaded once
    assert list(dict.fromkeys(runs.part)) == ["phase", "selected", "strategy", "model"]
    assert set(runs[runs.part == "strategy"].method) == {"TS", "TKFT", "floor"}
    assert (runs[runs.part == "strategy"].epochs == "1").all()
    key = ["truth_mode", "question", "seed", "method"]
    sel = runs[runs.part == "selected"].sort_values(key).reset_index(drop=True)
    mod = runs[runs.part == "model"].sort_values(key).reset_index(drop=True)
    assert np.array_equal(sel.jsd_mean.to_numpy(), mod.jsd_mean.to_numpy())  # the model row reuses the subset runs
    assert set(phase.method) == {"TS", "TKFT", "DSA", "floor"} and "part" not in phase.columns
    assert robustness.head_to_head(runs).runs.min() >= 1


def test_table5_means_each_fit_once_and_adds_the_references():
    rows = []
    for part, strategy in (("selected", "last_layer"), ("model", "last_layer"), ("strategy", "lora")):
        for seed in (0, 1):
            for m, v in (("TS", 0.3), ("floor", 0.05), ("TKFT", 0.2 + seed / 10), ("DSA", 0.1 + seed / 10)):
                rows.append({"part": part, "model": "tiny", "strategy": strategy, "epochs": "selected",
                             "truth_mode": "full", "question": "q", "seed": seed, "method": m,
                             "wd_scaled_mean": v + (0.01 if strategy == "lora" else 0)})
    t5 = robustness.table5(pd.DataFrame(rows))
    assert t5.loc[("tiny", "1", "last_layer", "selected"), "full"] == pytest.approx(0.25)  # counted once, not twice
    assert t5.loc[("tiny", "1+2", "lora", "selected"), "full"] == pytest.approx(0.16)
    assert t5.loc[("reference", "TS", "-", "-"), "full"] == pytest.approx(0.3)
    assert t5.loc[("reference", "floor", "-", "-"), "full"] == pytest.approx(0.05)
    with pytest.raises(DsaError, match="no TKFT or DSA"):
        robustness.table5(pd.DataFrame(rows).query("method in ['TS', 'floor']"))
