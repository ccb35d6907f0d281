"""The result store: atomic writes, resuming an interrupted run, run metadata."""

import json
import os
import re

import numpy as np
import pandas as pd
import pytest

from dsalib import results as R
from dsalib.errors import DsaError, ParameterError
from dsalib.metrics import METRIC_RULES


def _key(seed=0, method="TS", question="imbgeco"):
    return R.RunKey(study="enhancement", dataset="ess9", question=question, seed=seed, method=method)


def _table(seed):
    return pd.DataFrame({"subgroup": ["a | b", "c | d"], "n": [12, 30], "jsd": [0.1 + seed, 0.2]})


# -- keys ------------------------------------------------------------------


def test_key_names_are_safe_unique_and_stable():
    name = R.key_name(_key())
    assert name.startswith("dataset=ess9__method=TS__question=imbgeco__seed=0__study=enhancement-")
    # a dict with the same fields names the same file as the dataclass
    assert R.key_name(dict(method="TS", seed=0, study="enhancement", dataset="ess9", question="imbgeco")) == name
    odd = {"study": "x/../y", "method": "DSA (λ=0.5) *", "dataset": "a__b=c", "seed": np.int64(3)}
    n2 = R.key_name(odd)
    assert re.fullmatch(r"[A-Za-z0-9.+\-=_%]+", n2), n2
    assert "/" not in n2 and " " not in n2
    # separators inside values cannot make two keys collide
    assert R.key_name({"a": "x__b=y"}) != R.key_name({"a": "x", "b": "y"})
    assert R.key_name({"seed": 1}) != R.key_name({"seed": "1"})
    long = R.key_name({"method": "m" * 500})
    assert len(long.encode()) < 200
    assert R.key_name({"method": "m" * 500}) != R.key_name({"method": "m" * 499})
    with pytest.raises(DsaError, match="dataclass instance or a dict"):
        R.key_name(("a", 1))
    with pytest.raises(DsaError, match="string, number"):
        R.key_name({"a": [1, 2]})


# -- save / load -------------------------------------------------------------


def test_save_has_load_roundtrip(tmp_path):
    store = R.ResultStore(tmp_path / "store")
    assert not store.has(_key()) and len(store) == 0
    assert store.load_all().empty
    store.save(_key(0), {"jsd_mean": 0.17, "subgroups": np.int64(71), "wd_scaled_mean": np.float32(0.1)}, _table(0))
    store.save(_key(1), {"jsd_mean": 0.18, "subgroups": 70, "wd_scaled_mean": 0.11})
    assert store.has(_key(0)) and store.has(_key(1)) and not store.has(_key(2))
    assert store.load(_key(0))["subgroups"] == 71
    pd.testing.assert_frame_equal(store.load_per_subgroup(_key(0)), _table(0))
    assert store.load_per_subgroup(_key(1)) is None
    df = store.load_all()
    assert list(df.columns[:5]) == ["study", "dataset", "question", "seed", "method"]
    assert len(df) == 2 and list(df["seed"]) == [0, 1]
    assert df.loc[0, "jsd_mean"] == 0.17
    stacked = store.load_all_per_subgroup()
    assert len(stacked) == 2 and (stacked["seed"] == 0).all() and "subgroup" in stacked
    # saving again replaces (and a re-save without table drops the old table)
    store.save(_key(0), {"jsd_mean": 0.5, "subgroups": 71, "wd_scaled_mean": 0.1})
    assert store.load(_key(0))["jsd_mean"] == 0.5 and store.load_per_subgroup(_key(0)) is None
    with pytest.raises(DsaError, match="repeat key fields"):
        store.save(_key(3), {"seed": 1})


def test_interrupted_run_resumes(tmp_path):
    """A run dies after two keys (leaving a temp file and an orphan table); the rerun does only the rest."""
    root = tmp_path / "store"
    keys = [_key(seed=s, method=m) for s in range(3) for m in ("TS", "logit")]
    calls = []

    def compute(key):
        calls.append(key)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the run is killed while computing the third key
        return {"jsd_mean": 0.1 * key.seed}, _table(key.seed)

    store = R.ResultStore(root)
    with pytest.raises(KeyboardInterrupt):
        store.run(keys, compute, progress=None)
    assert len(store) == 2
    # what a kill during a write leaves behind: a half-written temp file, and a table whose record never came
    (store.records_dir / f".{R.key_name(keys[2])}.json.tmp-abc123").write_text('{"key": {"stu')
    store.table_path(keys[2]).write_text("half,a,table\n")
    (root / f".metadata.json.tmp-xyz").write_text("garbage")

    store = R.ResultStore(root)
    assert not store.has(keys[2]) and len(store) == 2
    assert len(store.load_all()) == 2  # temp files are not results
    assert len(store.temp_files()) == 2
    calls.clear()
    done = store.run(keys, lambda k: (calls.append(k), ({"jsd_mean": 0.1 * k.seed}, _table(k.seed)))[1],
                     progress=None)
    assert calls == keys[2:]  # finished keys skipped
    assert len(done) == len(keys) == len(store)
    pd.testing.assert_frame_equal(store.load_per_subgroup(keys[2]), _table(keys[2].seed))  # orphan replaced
    assert store.pending(keys) == []
    assert store.clean_temp() == 2 and store.temp_files() == []


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "t.csv"
    R.write_csv(pd.DataFrame({"a": [1]}), path)

    def boom(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(R.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        R.write_csv(pd.DataFrame({"a": [2, 3]}), path)
    monkeypatch.undo()
    assert pd.read_csv(path)["a"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]  # no temp file left


def test_written_files_have_ordinary_permissions(tmp_path):
    p = R.write_json(tmp_path / "m.json", {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert (p.stat().st_mode & 0o777) == (0o666 & ~mask)


def test_corrupt_record_is_an_error_not_a_silent_skip(tmp_path):
    store = R.ResultStore(tmp_path)
    store.record_path(_key()).write_text("{not json")
    with pytest.raises(DsaError, match="not a valid record"):
        store.load_all()


def test_store_refuses_other_settings(tmp_path):
    R.ResultStore(tmp_path, config={"n": 500, "seeds": [0, 1]})
    R.ResultStore(tmp_path, config={"n": 500, "seeds": [0, 1]})  # same settings: fine
    with pytest.raises(ParameterError, match=r"differing: \['n'\]"):
        R.ResultStore(tmp_path, config={"n": 1000, "seeds": [0, 1]})


# -- metadata ----------------------------------------------------------------


def test_run_metadata_records_code_version_and_rules(tmp_path):
    meta = R.run_metadata(study="theorem", params={"seed": 0, "sizes": np.array([1, 2])})
    cv = meta["code_version"]
    assert set(cv) >= {"describe", "commit", "dirty"}
    assert cv["commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}", cv["commit"])
    assert meta["metric_rules"] == METRIC_RULES
    assert set(meta["packages"]) >= {"torch", "transformers", "numpy", "pandas"}
    assert meta["packages"]["numpy"] == np.__version__
    assert meta["dsalib_version"] and meta["python"] and meta["platform"]
    assert meta["study"] == "theorem"
    path = R.write_metadata(tmp_path, study="theorem", params={"sizes": np.array([1, 2])})
    back = json.loads(path.read_text())
    assert back["params"]["sizes"] == [1, 2] and back["metric_rules"] == METRIC_RULES
    with pytest.raises(DsaError, match="recorded automatically"):
        R.run_metadata(python="2.7")


def test_code_version_outside_git(tmp_path):
    assert R.code_version(tmp_path) == {"describe": "unknown", "commit": "unknown", "dirty": None, "untracked": None}


def test_resolve_output_dir(tmp_path):
    assert R.resolve_output_dir(tmp_path) == tmp_path
    rel = R.resolve_output_dir("outputs/theorem/default")
    assert rel.is_absolute() and rel.parts[-3:] == ("outputs", "theorem", "default")
    with pytest.raises(ParameterError):
        R.resolve_output_dir("")
