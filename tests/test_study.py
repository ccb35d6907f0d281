"""The study set-up (dsalib.study): output folders of ad-hoc runs, tables swapped in as a set, the preamble."""

import shutil
import subprocess

import pytest

from dsalib import config, study
from dsalib.errors import DsaError
from dsalib.results import _repo_root


def test_ad_hoc_runs_write_under_runs_and_git_ignores_them():
    # papermill notebooks/enhancement.ipynb out.ipynb -p dataset gss2018 -y "methods: [TS, MNL]" -y "seeds: [0]"
    cfg = config.from_params("enhancement", {"dataset": "gss2018", "methods": ["TS", "MNL"], "seeds": [0]})
    assert study.output_dir_for(cfg) == "runs/enhancement/gss2018"
    assert study.output_dir_for(config.TheoremConfig()) == "runs/theorem/default"
    assert study.output_dir_for(config.EnhancementConfig(dataset="../../x.yaml")) == "runs/enhancement/x"
    assert study.output_dir_for(config.EnhancementConfig(output_dir="outputs/enhancement/ess9")) == \
        "outputs/enhancement/ess9"  # only an explicit output_dir (scripts/run_outputs.py) writes outputs/
    if shutil.which("git") is None or not (_repo_root() / ".git").exists():
        pytest.skip("not a git checkout")
    r = subprocess.run(["git", "check-ignore", "-q", "runs/enhancement/gss2018/results.csv"], cwd=_repo_root())
    assert r.returncode == 0, "runs/ must be git-ignored so ad-hoc runs leave git status clean"


def test_tables_are_swapped_in_as_a_set(tmp_path):
    final = tmp_path / "out" / "ess9"
    final.mkdir(parents=True)
    (final / "results.csv").write_text("old")
    (final / "summary.csv").write_text("old")
    (final / "stores").mkdir()
    (final / "stores" / "store.json").write_text("{}")
    out = study.OutputFolder(final)
    (out / "results.csv").write_text("new")
    assert (final / "results.csv").read_text() == "old"  # nothing changes before the run finishes
    assert out.path.parent == final.parent and out.path.name.startswith(".ess9.tmp-")
    out.commit()
    assert (final / "results.csv").read_text() == "new"
    assert not (final / "summary.csv").exists()  # no table of the old run survives beside the new ones
    assert (final / "stores" / "store.json").exists()  # stores kept in the output folder carry over
    assert sorted(p.name for p in final.parent.iterdir()) == ["ess9"]


def test_a_killed_run_leaves_the_old_tables_and_its_leftovers_are_cleaned(tmp_path):
    final = tmp_path / "ess9"
    final.mkdir()
    (final / "results.csv").write_text("old")
    killed = study.OutputFolder(final)
    (killed / "results.csv").write_text("half")  # the run dies here: no commit
    assert (final / "results.csv").read_text() == "old"
    study.OutputFolder(final)  # the next run cleans the leftover
    assert not killed.path.exists()
    # a swap interrupted between its two renames is rolled back
    old = tmp_path / ".ess9.old-abc"
    final.rename(old)
    study.OutputFolder(final)
    assert (final / "results.csv").read_text() == "old" and not old.exists()


def test_prepare_checks_the_data_before_opening_the_output_folder(tmp_path):
    cfg = config.EnhancementConfig(questions=["imbgeco"], output_dir=str(tmp_path / "o"), store_root=None)
    run = study.prepare(cfg)
    assert run.questions == ["imbgeco"] and run.survey.name == "ess9" and run.attributes
    assert run.store_root == str(tmp_path / "o" / "stores")
    assert "`ess9`" in run.data_line("n = 500") and run.data_line().endswith(".")
    bad = config.EnhancementConfig(questions=["nope"], output_dir=str(tmp_path / "bad"))
    with pytest.raises(DsaError, match="no core question"):
        study.prepare(bad)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad*"))
