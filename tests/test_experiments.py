"""The Enhancement driver: both truth modes from one fit, shared stores keyed by config, resuming, Phase 1 memo."""

import numpy as np
import pandas as pd
import pytest

from dsalib import experiments, llm_methods as L, surveys
from dsalib.errors import ParameterError
from dsalib.experiments import EnhancementConfig
from dsalib.results import ResultStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STATS = ("TS", "MNL", "EB-MNL")


def _cfg(**kw):
    base = dict(dataset="ess9", questions=["imbgeco"], n=200, seeds=(0,), methods=STATS)
    return EnhancementConfig(**{**base, **kw})


def test_both_modes_from_one_run(tmp_path):
    res = experiments.run_enhancement(_cfg(), modes=["full", "heldout"], store_root=tmp_path, progress=None)
    assert set(res.truth_mode) == {"full", "heldout"}
    assert set(res.method) == set(STATS) | {"floor"}
    # one store per mode, keyed by the config
    dirs = {m: experiments.store_dir_for(_cfg(), m, tmp_path) for m in ("full", "heldout")}
    assert dirs["full"] != dirs["heldout"] and all(len(ResultStore(d)) == 4 for d in dirs.values())
    # the heldout truth excludes the training sample, the full one contains it
    rows = res.set_index(["truth_mode", "method"])
    assert rows.loc[("full", "TS"), "truth_respondents"] - rows.loc[("heldout", "TS"), "truth_respondents"] == 200
    # the method was fitted once: the same fit time is recorded in both modes
    assert rows.loc[("full", "MNL"), "fit_seconds"] == rows.loc[("heldout", "MNL"), "fit_seconds"]
    # TS predicts the same distribution for a subgroup whatever the truth it is scored against
    per = experiments.load_per_subgroup_modes(_cfg(), ["full", "heldout"], tmp_path)
    ts = per[per.method == "TS"].set_index(["truth_mode", "subgroup"])
    common = sorted(set(ts.loc["full"].index) & set(ts.loc["heldout"].index))
    pcols = [c for c in per.columns if c.startswith("pred_")]
    assert len(common) > 10
    np.testing.assert_allclose(ts.loc["full"].loc[common, pcols].to_numpy(float),
                               ts.loc["heldout"].loc[common, pcols].to_numpy(float))
    assert rows["code_commit"].notna().all()


def test_weighted_training_is_its_own_run(tmp_path):
    """weighted_train: the training distributions are weighted (TS predicts the weighted sample), its own store."""
    plain = _cfg(dataset="ess10no", weighted_truth=True)
    weighted = _cfg(dataset="ess10no", weighted_truth=True, weighted_train=True)
    assert experiments.store_dir_for(plain, "heldout", tmp_path) != experiments.store_dir_for(weighted, "heldout", tmp_path)
    a = experiments.run_enhancement(plain, modes=["heldout"], store_root=tmp_path, progress=None)
    b = experiments.run_enhancement(weighted, modes=["heldout"], store_root=tmp_path, progress=None)
    # the same truth (the floor is identical), different training distributions (TS differs)
    fa, fb = (r.set_index("method").loc["floor", "jsd_mean"] for r in (a, b))
    assert fa == fb
    ta, tb = (r.set_index("method").loc["TS", "jsd_mean"] for r in (a, b))
    assert ta != tb
    s = surveys.load_survey("ess10no", questions=["imbgeco"])
    split = surveys.enhancement_split(s, "imbgeco", 200, 0, "heldout", weighted=True, weighted_train=True)
    per = experiments.load_per_subgroup_modes(weighted, ["heldout"], tmp_path)
    present = per[(per.method == "TS") & (per.train_n > 0)]
    row = {label: i for i, label in enumerate(split.train.subgroup_labels())}
    pcols = [c for c in per.columns if c.startswith("pred_")]
    assert len(present) > 5
    np.testing.assert_allclose(present[pcols].to_numpy(float),
                               split.train.dist[[row[g] for g in present.subgroup]], atol=1e-12)


def test_weights_on_a_dataset_without_weights_are_refused_before_any_work(tmp_path):
    with pytest.raises(ParameterError, match="weighted_train.*no respondent weight"):
        experiments.run_enhancement(_cfg(weighted_train=True), store_root=tmp_path, progress=None)
    assert not any(tmp_path.iterdir())  # nothing was stored


def test_a_second_run_reuses_the_shared_store(tmp_path):
    first = experiments.run_enhancement(_cfg(), store_root=tmp_path, progress=None)
    d = experiments.store_dir_for(_cfg(), "full", tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in d.rglob("*.json")}
    lines = []
    again = experiments.run_enhancement(_cfg(methods=("TS",)), store_root=tmp_path, progress=lines.append)
    assert lines == []  # nothing recomputed: a subset of the methods is already stored
    assert {p: p.stat().st_mtime_ns for p in d.rglob("*.json")} == stamps
    pd.testing.assert_frame_equal(
        first[first.method == "TS"].reset_index(drop=True)[["jsd_mean"]],
        again[again.method == "TS"].reset_index(drop=True)[["jsd_mean"]])


def test_store_dir_is_keyed_by_what_results_depend_on(tmp_path):
    a = experiments.store_dir_for(_cfg(), "full", tmp_path)
    assert a == experiments.store_dir_for(_cfg(methods=("TS",), seeds=(3, 4), questions=None), "full", tmp_path)
    for change in (dict(n=300), dict(model="tiny"), dict(template="para1"), dict(phase1={"lr": 1e-3}),
                   dict(background=("gender", "age"))):
        assert experiments.store_dir_for(_cfg(**change), "full", tmp_path) != a, change


def test_bad_parameters_are_clear(tmp_path):
    with pytest.raises(ParameterError, match="template.*must be one of"):
        _cfg(template="nope")
    with pytest.raises(ParameterError, match="truth modes"):
        experiments.run_enhancement(_cfg(), modes=["full", "both"], store_root=tmp_path)
    with pytest.raises(ParameterError, match="store_root"):
        experiments.run_enhancement(_cfg(), store_dir=tmp_path / "s", modes=["full", "heldout"])


def test_dsa_reuses_tkfts_phase1_exactly(ess9, monkeypatch):
    from dsalib import train

    lm = L.LanguageModel.load("tiny")
    split = surveys.enhancement_split(ess9, "imbgeco", 200, 0)
    calls = []
    real = train.run_phase1
    monkeypatch.setattr(train, "run_phase1", lambda *a, **k: calls.append(1) or real(*a, **k))
    p1 = train.Phase1Config(lr=1e-3, max_epochs=3, patience=1)
    p2 = train.Phase2Config(lr=1e-3, min_pair_size=3, epochs=1)
    tk = L.tkft(lm, ess9, phase1_config=p1).fit(split.train)
    assert len(calls) == 2  # selection on the fit split, then the final fit
    ds = L.dsa(lm, ess9, phase1_config=p1, phase2_config=p2).fit(split.train)
    assert len(calls) == 2  # DSA's Phase 1 came from the memo
    assert ds.report["phase1"] == tk.report["phase1"]
    assert ds.report["selection"]["phase1_epochs"] == tk.report["selection"]["phase1_epochs"]
    # and a fresh model computes the same Phase 1 (the memo is exact, not an approximation)
    fresh = L.LanguageModel.load("tiny")
    ds2 = L.dsa(fresh, ess9, phase1_config=p1, phase2_config=p2).fit(split.train)
    keys = split.truth.keys[:20]
    np.testing.assert_allclose(ds.predict(keys), ds2.predict(keys), atol=1e-6)
    assert len(calls) == 4  # the fresh model has its own memo
    # a different Phase 1 config is not served from the memo
    L.tkft(lm, ess9, phase1_config=train.Phase1Config(lr=2e-3, max_epochs=3, patience=1)).fit(split.train)
    assert len(calls) == 6


def test_an_fsdp_launch_with_last_layer_fine_tuning_is_refused_before_any_work(monkeypatch, tmp_path):
    from dsalib import distributed

    monkeypatch.setattr(distributed, "fsdp_launched", lambda: True)  # as under accelerate launch with fsdp.yaml
    cfg = EnhancementConfig(dataset="ess9", source="embedded", questions=["imbgeco"], n=200, seeds=[0],
                            modes=["full"], methods=["TS", "Direct", "TKFT"], strategy="last_layer")
    with pytest.raises(ParameterError, match=r"FSDP launch.*\['TKFT'\].*lora or full.*multi_gpu.yaml"):
        experiments.run_enhancement(cfg, tmp_path / "store")
    assert not (tmp_path / "store").exists()
