"""The cross-question prior (dsalib.cross_question): a model of the survey's other questions for a target question."""

import numpy as np
import pytest

from dsalib import cross_question as X
from dsalib import experiments, metrics, surveys
from dsalib.errors import DsaError
from dsalib.experiments import EnhancementConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    from dsalib.llm_methods import LanguageModel

    return LanguageModel.load("tiny")


def test_the_other_questions_model_never_sees_the_target_and_is_trained_once(tiny, ess9):
    from dsalib.train import Phase1Config

    attrs = ess9.check_background(None)
    p1 = Phase1Config(epochs=1, lr=1e-3)
    m = X.other_questions_model(tiny, ess9, "imbgeco", attrs, p1)
    assert m.questions == ("imueclt", "imwbcnt", "lrscale")
    assert X.other_questions_model(tiny, ess9, "imbgeco", attrs, p1) is m  # memoised for every size and seed
    assert X.other_questions_model(tiny, ess9, "lrscale", attrs, p1) is not m
    keys = surveys.subgroup_table(ess9, "imbgeco", attrs).keys
    p = m.predict_question("imbgeco", keys)
    assert p.shape == (len(keys), 11) and np.allclose(p.sum(axis=1), 1)
    with pytest.raises(DsaError, match="no core question besides"):
        X.other_questions(surveys.load_survey("wvs_immig"), "e143")


def test_cross_question_methods_run_in_the_enhancement_protocol(tiny, tmp_path):
    cfg = EnhancementConfig(dataset="ess9", questions=["imbgeco"], n=150, seeds=[0], modes=["heldout"], model="tiny",
                            methods=["TS", "MNL", "Stacked-MNL", "XQ", "EB-XQ", "XQ-TKFT"],
                            phase1={"epochs": None, "max_epochs": 2, "lr": 1e-3})
    res = experiments.run_enhancement(cfg, lm=tiny, store_root=tmp_path, progress=None).set_index("method")
    assert set(res.index) >= {"XQ", "EB-XQ", "XQ-TKFT", "Stacked-MNL"}
    assert np.isfinite(res.loc[["XQ", "EB-XQ", "XQ-TKFT"], "jsd_mean"]).all()
    assert res.loc["XQ", "report"]["questions"] == ["imueclt", "imwbcnt", "lrscale"]
    assert res.loc["XQ-TKFT", "report"]["warm_start"]["questions"] == ["imueclt", "imwbcnt", "lrscale"]
    # EB-XQ shrinks the sample toward XQ: between the two, subgroup by subgroup
    per = experiments.load_per_subgroup_modes(cfg, ["heldout"], tmp_path)
    pc = [c for c in per.columns if c.startswith("pred_")]
    get = {m: per[per.method == m].sort_values("subgroup")[pc].to_numpy(float) for m in ("TS", "XQ", "EB-XQ")}
    present = per[per.method == "TS"].sort_values("subgroup").train_n.to_numpy() > 0
    d_ts = metrics.jsd(get["EB-XQ"][present], get["TS"][present])
    d_xq = metrics.jsd(get["EB-XQ"][present], get["XQ"][present])
    assert (d_ts <= metrics.jsd(get["XQ"][present], get["TS"][present]) + 1e-9).all()
    assert (d_xq <= metrics.jsd(get["XQ"][present], get["TS"][present]) + 1e-9).all()


def test_warm_start_starts_from_the_other_questions_weights(tiny, ess9):
    """XQ-TKFT with 0 epochs predicts exactly what XQ predicts (the warm start is the other questions' model)."""
    from dsalib.methods import make_method

    split = surveys.enhancement_split(ess9, "imbgeco", 150, 0, "heldout")
    p1 = {"epochs": 0}
    xq = make_method("XQ", lm=tiny, survey=ess9, phase1=p1).fit(split.train)
    warm = make_method("XQ-TKFT", lm=tiny, survey=ess9, phase1=p1).fit(split.train)
    keys = split.truth.keys
    np.testing.assert_allclose(warm.predict(keys), xq.predict(keys), atol=1e-6)
