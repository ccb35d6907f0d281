"""The grid on submitit: units per (dataset, question), two arrays writing one store, resumes computing nothing."""

import pytest

from dsalib import experiments, grid
from dsalib.errors import DsaError, ParameterError
from dsalib.experiments import EnhancementConfig
from dsalib.results import ResultStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(**kw):
    base = dict(dataset="beps", questions=("Europe", "Blair"), n=300, seeds=(0, 1), methods=("TS", "MNL"))
    return EnhancementConfig(**{**base, **kw})


def test_plan_splits_gpu_and_cpu_methods_per_question():
    cfg = _cfg(methods=("TS", "TKFT", "MNL", "DSA", "EB-MNL", "EB-DSA"))
    units = grid.plan(cfg)
    assert [u.name for u in units] == ["cpu:beps:Europe", "gpu:beps:Europe", "cpu:beps:Blair", "gpu:beps:Blair"]
    assert units[0].methods == ("TS", "MNL", "EB-MNL") and units[1].methods == ("TKFT", "DSA", "EB-DSA")
    assert [u.kind for u in grid.plan(_cfg())] == ["cpu", "cpu"]  # no model methods: no GPU array


def test_plan_rejects_a_bad_question_before_submitting():
    with pytest.raises(DsaError, match="no core question 'nope'"):
        grid.plan(_cfg(questions=("nope",)))


def test_two_local_jobs_write_one_store_and_a_resume_computes_nothing(tmp_path):
    cfg, modes = _cfg(), ["full", "heldout"]
    jobs = grid.submit(cfg, modes, store_root=tmp_path / "runs", folder=tmp_path / "jobs", cluster="local")
    assert len(jobs) == 2
    first = grid.wait(jobs)
    # 2 seeds x (TS, MNL, floor) per question and mode
    assert sorted(r["computed"] for r in first) == [12, 12]
    stores = {m: ResultStore(experiments.store_dir_for(cfg, m, tmp_path / "runs")) for m in modes}
    assert all(len(s) == 12 for s in stores.values())  # both jobs wrote into the one store of each mode
    table = stores["full"].load_all()
    assert sorted(set(table.question)) == ["Blair", "Europe"]
    assert not table.duplicated(["question", "seed", "method"]).any()
    again = grid.wait(grid.submit(cfg, modes, store_root=tmp_path / "runs", folder=tmp_path / "jobs2", cluster="local"))
    assert [r["computed"] for r in again] == [0, 0]


def test_a_gpu_unit_runs_the_model_methods_without_the_floor(tmp_path):
    cfg = _cfg(questions=("Europe",), seeds=(0,), methods=("TS", "Direct", "TKFT"), model="tiny",
               phase1={"epochs": 1})
    units = grid.plan(cfg)
    out = [grid.run_unit(cfg, u, ["full"], tmp_path) for u in units]
    assert out == [{"unit": "cpu:beps:Europe", "computed": 2}, {"unit": "gpu:beps:Europe", "computed": 2}]
    table = ResultStore(experiments.store_dir_for(cfg, "full", tmp_path)).load_all()
    assert sorted(table.method) == ["Direct", "TKFT", "TS", "floor"]
    assert [grid.run_unit(cfg, u, ["full"], tmp_path)["computed"] for u in units] == [0, 0]


def test_unknown_cluster_is_a_clear_error(tmp_path):
    with pytest.raises(ParameterError, match="cluster"):
        grid.make_executor("cpu", "kubernetes", tmp_path)
