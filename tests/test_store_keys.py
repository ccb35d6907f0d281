"""Honest store keys (dsalib.stores): resolved settings, spec content, data fingerprint and STORE_VERSION."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from dsalib import config, experiments, stores, surveys
from dsalib.config import EnhancementConfig
from dsalib.results import ResultStore

TOY_SPEC = {
    "name": "toy", "title": "Toy survey", "licence": "test data",
    "sources": [{"kind": "file", "description": "a CSV", "files": ["toy.csv"], "archive": "nowhere"}],
    "core": {"q": {"wording": "Q?", "options": {1: "low", 2: "mid", 3: "high"}}},
    "background": {
        "g": {"variable": "g", "wording": "G?", "levels": [{"name": "u", "codes": [1]}, {"name": "v", "codes": [2]}]},
        "h": {"variable": "h", "wording": "H?", "levels": [{"name": "p", "codes": [1]}, {"name": "r", "codes": [2]}]},
    },
}


def _toy(tmp_path, rows=800, seed=0):
    """A file-based dataset: spec at tmp_path/toy.yaml, data at tmp_path/data/toy.csv."""
    rng = np.random.default_rng(seed)
    g, h = rng.integers(1, 3, rows), rng.integers(1, 3, rows)
    q = np.clip(g + h - 1 + rng.integers(-1, 2, rows), 1, 3)
    (tmp_path / "data").mkdir(exist_ok=True)
    pd.DataFrame({"q": q, "g": g, "h": h}).to_csv(tmp_path / "data" / "toy.csv", index=False)
    spec = tmp_path / "toy.yaml"
    if not spec.exists():
        spec.write_text(yaml.safe_dump(TOY_SPEC))
    return str(spec), str(tmp_path / "data")


def _cfg(**kw):
    return EnhancementConfig(**{"dataset": "ess9", "questions": ["imbgeco"], "n": 200, "seeds": [0],
                                "methods": ["TS"], "modes": ["full"], **kw})


def test_defaults_filled_in_give_one_key(tmp_path):
    a = experiments.store_dir_for(_cfg(), "full", tmp_path)
    assert a == experiments.store_dir_for(_cfg(phase1={}), "full", tmp_path)
    assert a == experiments.store_dir_for(_cfg(phase1={"lr": 5e-5}, phase2={"min_pair_size": 10}), "full", tmp_path)
    # background None is the source's default set: the same results, the same store
    ess9 = surveys.load_survey("ess9")
    assert a == experiments.store_dir_for(_cfg(background=list(ess9.default_background)), "full", tmp_path)
    assert a != experiments.store_dir_for(_cfg(phase1={"lr": 1e-3}), "full", tmp_path)


def test_placement_settings_are_not_in_the_key_and_reach_the_model(tmp_path):
    """Where the model runs (cache budget, prefix batch, device map) never changes a result: one store."""
    a = experiments.store_dir_for(_cfg(), "full", tmp_path)
    placed = _cfg(prefix_cache_bytes=10**6, prefix_batch_size=4, device_map="auto")
    assert a == experiments.store_dir_for(placed, "full", tmp_path)
    assert set(config.MODEL_PLACEMENT_FIELDS) <= set(EnhancementConfig().to_params())
    assert set(config.MODEL_PLACEMENT_FIELDS) <= set(config.GenerationConfig().to_params())
    from dsalib.llm_methods import LanguageModel

    lm = LanguageModel.from_config(_cfg(model="tiny", prefix_cache=None, prefix_cache_bytes=12345,
                                        prefix_batch_size=3, chat_template=False))
    assert (lm.prefix_cache_bytes, lm.prefix_batch_size, lm.prefix_cache_dir) == (12345, 3, None)
    om, _ = lm.option_model(3)
    assert om.prefix_batch_size == 3 and om.prefix_cache.budget_bytes == 12345


def test_every_resolved_default_is_in_the_key():
    """Changing a default changes the key: the key holds the resolved value of every setting, not the overrides."""
    ess9 = surveys.load_survey("ess9")
    key = stores.store_key("enhancement", experiments.store_settings(_cfg(), "full", ess9), ess9)
    p1 = key["config"]["phase1"]
    assert p1["max_epochs"] == 30 and p1["lr"] == 5e-5 and "patience" in p1
    assert key["config"]["min_eval_size"] == 10 and key["config"]["strategy"] == "last_layer"
    ess9_dir = experiments.store_dir_for(_cfg(), "full", "x", ess9)
    assert ess9_dir != experiments.store_dir_for(_cfg(phase1={"max_epochs": 31}), "full", "x", ess9)


def test_store_version_is_in_the_key(monkeypatch, tmp_path):
    a = experiments.store_dir_for(_cfg(), "full", tmp_path)
    monkeypatch.setattr(config, "STORE_VERSION", config.STORE_VERSION + 1)
    assert experiments.store_dir_for(_cfg(), "full", tmp_path) != a


def test_editing_the_spec_recomputes(tmp_path):
    spec = tmp_path / "ess9.yaml"
    spec.write_text((surveys.SPEC_DIR / "ess9.yaml").read_text())
    root = tmp_path / "stores"
    lines = []
    experiments.run_enhancement(_cfg(dataset=str(spec)), store_root=root, progress=lines.append)
    assert lines  # computed
    lines.clear()
    experiments.run_enhancement(_cfg(dataset=str(spec)), store_root=root, progress=lines.append)
    assert lines == []  # same spec: reused
    raw = yaml.safe_load(spec.read_text())
    raw["core"]["imbgeco"]["wording"] = raw["core"]["imbgeco"]["wording"] + " (edited)"
    spec.write_text(yaml.safe_dump(raw))
    experiments.run_enhancement(_cfg(dataset=str(spec)), store_root=root, progress=lines.append)
    assert lines  # an edited spec is a new store: recomputed, never reused
    assert len(list(root.iterdir())) == 2


def test_replacing_the_data_file_recomputes(tmp_path):
    spec, data = _toy(tmp_path, rows=800)
    cfg = EnhancementConfig(dataset=spec, data_dir=data, n=100, seeds=[0], methods=["TS"], modes=["heldout"],
                            min_eval_size=5)
    root = tmp_path / "stores"
    first = experiments.run_enhancement(cfg, store_root=root, progress=None)
    d800 = experiments.store_dir_for(cfg, "heldout", root)
    saved = json.loads((d800 / "store.json").read_text())["config"]
    assert saved["data"]["kind"] == "file" and saved["data"]["size"] > 0 and len(saved["data"]["sha256"]) == 64
    assert saved["spec"]["name"] == "toy" and saved["store_version"] == config.STORE_VERSION
    assert saved["config"]["n"] == 100 and saved["config"]["mode"] == "heldout"
    _toy(tmp_path, rows=600)  # the user cuts the file
    d600 = experiments.store_dir_for(cfg, "heldout", root)
    assert d600 != d800
    second = experiments.run_enhancement(cfg, store_root=root, progress=None)
    assert second.truth_respondents.iloc[0] == first.truth_respondents.iloc[0] - 200


def test_a_recorded_key_that_differs_is_never_reused(tmp_path):
    store = ResultStore(tmp_path / "s", config={"store_version": 1, "data": {"sha256": "a"}})
    store.save({"k": 1}, {"v": 1.0})
    with pytest.raises(config.ParameterError, match="other settings.*data"):
        ResultStore(tmp_path / "s", config={"store_version": 1, "data": {"sha256": "b"}})


def test_a_dataset_path_cannot_place_a_store_outside_the_root(tmp_path):
    spec, data = _toy(tmp_path)
    root = tmp_path / "a" / "b" / "stores"
    survey = surveys.load_survey(spec, data_dir=data)
    cfg = EnhancementConfig(dataset=spec, data_dir=data, n=50, methods=["TS"])
    path = experiments.store_dir_for(cfg, "full", root, survey)
    assert path.parent == root and path.name.startswith("enhancement-toy-full-n50-")
    for name in ("../../x", "../../x.yaml", "/etc/x", "a/../../b"):
        assert stores.store_dir(root, [name], {"x": 1}).parent == root
        assert "/" not in stores.slug(name) and ".." not in stores.slug(name)
