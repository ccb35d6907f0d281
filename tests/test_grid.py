"""The grid on submitit: units per (dataset, question), two arrays writing one store, resumes computing nothing."""

import pytest

from dsalib import experiments, grid
from dsalib.errors import DsaError, ParameterError
from dsalib.experiments import EnhancementConfig
from dsalib.results import ResultStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(**kw):
    base = dict(dataset="beps", questions=["Europe", "Blair"], n=300, seeds=[0, 1], methods=["TS", "MNL"],
                modes=["full", "heldout"])
    return EnhancementConfig(**{**base, **kw})


def test_plan_splits_gpu_and_cpu_methods_per_question():
    cfg = _cfg(methods=["TS", "TKFT", "MNL", "DSA", "EB-MNL", "EB-DSA"])
    units = grid.plan(cfg)
    assert [u.name for u in units] == ["cpu:beps:Europe", "gpu:beps:Europe", "cpu:beps:Blair", "gpu:beps:Blair"]
    assert units[0].methods == ("TS", "MNL", "EB-MNL") and units[1].methods == ("TKFT", "DSA", "EB-DSA")
    assert [u.floor for u in units] == [True, False, True, False]  # the floor is computed once per question
    assert [u.kind for u in grid.plan(_cfg())] == ["cpu", "cpu"]  # no model methods: no GPU array
    only_llm = grid.plan(_cfg(methods=["TKFT"]))
    assert [(u.kind, u.floor) for u in only_llm] == [("gpu", True), ("gpu", True)]


def test_plan_rejects_a_bad_question_before_submitting():
    with pytest.raises(DsaError, match="no core question.*'nope'"):
        grid.plan(_cfg(questions=["nope"]))


def test_two_local_jobs_write_one_store_and_a_resume_computes_nothing(tmp_path):
    cfg, modes = _cfg(store_root=str(tmp_path / "runs")), ["full", "heldout"]
    jobs = grid.submit(cfg, folder=tmp_path / "jobs", cluster="local")
    assert len(jobs) == 2
    first = grid.wait(jobs)
    # 2 seeds x (TS, MNL, floor) per question and mode
    assert sorted(r["computed"] for r in first) == [12, 12]
    stores = {m: ResultStore(experiments.store_dir_for(cfg, m, tmp_path / "runs")) for m in modes}
    assert all(len(s) == 12 for s in stores.values())  # both jobs wrote into the one store of each mode
    table = stores["full"].load_all()
    assert sorted(set(table.question)) == ["Blair", "Europe"]
    assert not table.duplicated(["question", "seed", "method"]).any()
    again = grid.wait(grid.submit(cfg, folder=tmp_path / "jobs2", cluster="local"))
    assert [r["computed"] for r in again] == [0, 0]


def test_a_gpu_unit_runs_the_model_methods_without_the_floor(tmp_path):
    cfg = _cfg(questions=["Europe"], seeds=[0], methods=["TS", "Direct", "TKFT"], model="tiny",
               phase1={"epochs": 1}, prefix_cache=None)
    units = grid.plan(cfg)
    out = [grid.run_unit(cfg, u, ["full"], tmp_path) for u in units]
    assert out == [{"unit": "cpu:beps:Europe", "computed": 2}, {"unit": "gpu:beps:Europe", "computed": 2}]
    table = ResultStore(experiments.store_dir_for(cfg, "full", tmp_path)).load_all()
    assert sorted(table.method) == ["Direct", "TKFT", "TS", "floor"]
    assert [grid.run_unit(cfg, u, ["full"], tmp_path)["computed"] for u in units] == [0, 0]


def test_unknown_cluster_is_a_clear_error(tmp_path):
    with pytest.raises(ParameterError, match="cluster"):
        grid.make_executor("cpu", "kubernetes", tmp_path)


def test_dsa_grid_from_a_parameter_file(tmp_path, capsys):
    from dsalib import cli

    params = tmp_path / "beps.yaml"
    params.write_text(f"dataset: beps\nquestions: [Europe]\nn: 300\nseeds: [0]\nmodes: [full]\nmethods: [TS, MNL]\n"
                      f"store_root: {tmp_path / 'stores'}\n")
    assert cli.main(["grid", str(params), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 jobs (0 GPU, 1 CPU)" in out and "cpu:beps:Europe: TS, MNL + floor" in out
    assert not (tmp_path / "stores").exists()
    assert cli.main(["grid", str(params), "--cluster", "debug", "--wait", "--folder", str(tmp_path / "jobs")]) == 0
    assert "cpu:beps:Europe: 3 result(s) computed" in capsys.readouterr().out
    assert cli.main(["grid", str(params), "--cluster", "debug", "--wait", "--folder", str(tmp_path / "jobs")]) == 0
    assert "done, 0 result(s) computed" in capsys.readouterr().out
    # bad input: named, nothing submitted
    assert cli.main(["grid", str(params), "--set", "seeds=[0.5]"]) == 2
    assert "seeds[0]" in capsys.readouterr().err
    bad = tmp_path / "res.yaml"
    bad.write_text("gpus: {}\n")
    assert cli.main(["grid", str(params), "--resources", str(bad)]) == 2
    assert "'gpu' and 'cpu'" in capsys.readouterr().err


def test_the_paper_parameter_files_are_valid_configs():
    from pathlib import Path

    import yaml

    from dsalib import config

    files = sorted((Path(__file__).resolve().parent.parent / "params" / "paper").glob("*.yaml"))
    assert len(files) == 10
    for f in files:
        cfg = config.from_params("enhancement", yaml.safe_load(f.read_text()))
        assert cfg.model.startswith("Qwen/Qwen3-") and cfg.phase1.epochs == 1 and cfg.phase2.guard is False
