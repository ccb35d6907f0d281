"""Notebooks: smoke runs through papermill, jupytext pairing, parameters cells, parameter files."""

import importlib.util
import json
import sys
from pathlib import Path

import jupytext
import nbformat
import pandas as pd
import papermill as pm
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
PARAMS = ROOT / "params"

_spec = importlib.util.spec_from_file_location("run_outputs", ROOT / "scripts" / "run_outputs.py")
run_outputs = sys.modules.setdefault("run_outputs", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(run_outputs)

PY_NOTEBOOKS = sorted(NOTEBOOKS.glob("*.py"))
IPYNBS = sorted(NOTEBOOKS.glob("*.ipynb"))
SMOKE = sorted(p.stem for p in (PARAMS / "smoke").glob("*.yaml"))
#: Files each study's smoke run must write to its output_dir (besides metadata.json).
EXPECTED_OUTPUTS = {
    "robustness": ["better_than_ts.csv", "better_than_ts_runs.csv", "better_than_ts_by_question.csv", "better_than_ts.png",
                   "better_than_ts_by_size.png", "prompt_consistency.csv", "prompt_pairwise_per_subgroup.csv",
                   "prompt_template_errors.csv", "prompt_consistency.png"],
    "ablations": ["results.csv", "phase.csv", "phase_difference.csv", "phase2_reports.csv", "strategy.csv", "models.csv",
                  "table5.csv", "ablations.png"],
    "data_efficiency": ["reference_results.csv", "ts_grid_results.csv", "across_sizes_results.csv", "ts_curve.csv",
                        "equivalent_sizes.csv", "errors_by_size.csv", "ts_curve.png", "equivalent_sizes.png",
                        "errors_by_size.png"],
    "unseen_backgrounds": ["per_subgroup.csv", "absent_counts.csv", "by_presence.csv", "by_size.csv",
                           "jsd_by_size.png", "per_subgroup_sorted.png"],
    "cross_question": ["results.csv", "by_size.csv", "verdicts.csv", "jsd_by_size.png"],
    "dsa_regime": ["results.csv", "phase2_runs.csv", "summary.csv", "phase2_summary.csv", "training_subgroups.csv",
                   "jsd_by_method.png"],
    "enhancement": ["results.csv", "per_subgroup.csv", "summary.csv", "jsd_by_method.png", "small_subgroups.png"],
    "generation": ["results.csv", "per_subgroup.csv", "summary.csv", "split_sizes.csv", "unseen_population.csv",
                   "jsd_by_split.png", "unseen_population.png"],
    "theorem": ["key_numbers.csv", "exact_recovery.csv", "transfer_comparison.csv", "error_growth.csv", "finite_sample.csv",
                "break_even.csv", "error_growth.png", "finite_sample.png"],
}


@pytest.fixture(scope="module")
def kernel():
    """Kernel ``dsa`` (the notebooks' kernelspec) = this interpreter, whether or not ``make setup`` installed a user kernel."""
    with run_outputs.private_kernel() as name:
        yield name


def _smoke_params(study):
    with open(PARAMS / "smoke" / f"{study}.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


@pytest.mark.parametrize("study", SMOKE)
def test_smoke_run(study, kernel, tmp_path):
    nb = NOTEBOOKS / f"{study}.ipynb"
    assert nb.exists(), f"params/smoke/{study}.yaml has no notebook notebooks/{study}.ipynb"
    out_nb = tmp_path / f"{study}.ipynb"
    out_dir = tmp_path / study
    pm.execute_notebook(str(nb), str(out_nb), parameters={**_smoke_params(study), "output_dir": str(out_dir)},
                        kernel_name=kernel, cwd=str(ROOT), progress_bar=False)
    assert out_nb.exists()
    executed = nbformat.read(out_nb, as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    meta = json.loads((out_dir / "metadata.json").read_text())
    assert meta["code_version"]["commit"] and meta["metric_rules"]
    assert meta["params"]["output_dir"] == str(out_dir)
    for name in EXPECTED_OUTPUTS.get(study, []):
        path = out_dir / name
        assert path.exists() and path.stat().st_size > 0, name
        if name.endswith(".csv"):
            assert len(pd.read_csv(path)) > 0, name
    if study == "theorem":
        rec = pd.read_csv(out_dir / "exact_recovery.csv")
        assert rec["max_abs_error"].max() < 1e-12
        keys = pd.read_csv(out_dir / "key_numbers.csv").set_index("name")["value"]
        assert keys["theorem_max_error"] < 1e-12
        glued = {o["metadata"]["scrapbook"]["name"] for c in executed.cells if c.cell_type == "code"
                 for o in c.get("outputs", []) if "scrapbook" in o.get("metadata", {})}
        assert set(keys.index) <= glued, "every key number is glued for the book"


def test_theorem_notebook_rejects_unknown_parameter(kernel, tmp_path):
    params = {**_smoke_params("theorem"), "output_dir": str(tmp_path / "out"), "repetitons": 3}
    with pytest.raises(pm.PapermillExecutionError, match="unknown parameter.*repetitons"):
        pm.execute_notebook(str(NOTEBOOKS / "theorem.ipynb"), str(tmp_path / "bad.ipynb"), parameters=params,
                            kernel_name=kernel, cwd=str(ROOT), progress_bar=False)
    assert not (tmp_path / "out").exists()  # nothing written before the parameters were checked


@pytest.mark.parametrize("py", PY_NOTEBOOKS, ids=lambda p: p.name)
def test_py_and_ipynb_in_sync(py):
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.exists(), f"{py.name} has no paired notebook; run: jupytext --to ipynb {py.relative_to(ROOT)}"
    a, b = jupytext.read(py), jupytext.read(ipynb)
    cells = lambda nb: [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]  # noqa: E731
    assert cells(a) == cells(b), f"{py.name} and {ipynb.name} differ; run: jupytext --sync {py.relative_to(ROOT)}"
    assert "py:percent" in b.metadata.get("jupytext", {}).get("formats", ""), "pair with: jupytext --set-formats ipynb,py:percent"


@pytest.mark.parametrize("py", PY_NOTEBOOKS, ids=lambda p: p.name)
def test_figures_are_glued_from_one_rendering(py):
    """A figure is glued through results.glue_figure, never glue(name, fig) plus a second display.

    Rendered twice, a figure can give two different PNGs, and the book then links an image myst-nb never wrote.
    """
    import re

    twice = [line for line in py.read_text(encoding="utf-8").splitlines()
             if re.search(r"\bglue\([^)]*,\s*(fig|figure|plt\.gcf\(\))\b", line)]
    assert not twice, f"{py.name} glues a figure directly; use results.glue_figure(name, fig): {twice}"


@pytest.mark.parametrize("ipynb", IPYNBS, ids=lambda p: p.name)
def test_one_parameters_cell_and_no_outputs(ipynb):
    nb = nbformat.read(ipynb, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{ipynb.name} has {len(tagged)} cells tagged 'parameters'; it needs exactly one"
    assert tagged[0].cell_type == "code"
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        f"{ipynb.name} is committed with outputs; executed notebooks belong in outputs/"
    assert ipynb.with_suffix(".py").exists(), f"{ipynb.name} has no jupytext .py pair"


def _param_files():
    files = []
    for nb in IPYNBS:
        files += [(nb, f) for f in sorted((PARAMS / nb.stem).glob("*.yaml"))]
        if (PARAMS / "smoke" / f"{nb.stem}.yaml").exists():
            files.append((nb, PARAMS / "smoke" / f"{nb.stem}.yaml"))
    return files


@pytest.mark.parametrize("nb,params_file", _param_files(), ids=lambda p: p.name)
def test_parameter_files_name_only_declared_parameters(nb, params_file):
    declared = pm.inspect_notebook(str(nb))
    with open(params_file, encoding="utf-8") as fh:
        given = yaml.safe_load(fh) or {}
    assert set(given) <= set(declared), f"{params_file}: unknown {sorted(set(given) - set(declared))}"
    assert "output_dir" not in given, "the runner sets output_dir"
    assert "output_dir" in declared


def test_runner_discovers_runs(tmp_path):
    runs = run_outputs.discover()
    assert any(r.study == "theorem" and r.name == "default" for r in runs)
    r = next(r for r in runs if r.study == "theorem" and r.name == "default")
    assert r.output_notebook == ROOT / "outputs" / "theorem" / "default.ipynb"
    assert r.output_dir == ROOT / "outputs" / "theorem" / "default"
    smoke = run_outputs.discover(smoke=True, only=["theorem"], out_root=tmp_path)
    assert [(s.name, s.output_dir) for s in smoke] == [("smoke", tmp_path / "theorem" / "smoke")]
    with pytest.raises(SystemExit, match="unknown study"):
        run_outputs.discover(only=["nope"])


def test_runner_failed_run_keeps_previous_output(kernel, tmp_path):
    """A run that fails in the notebook (here: a question the dataset lacks) leaves the previous executed notebook."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**_smoke_params("enhancement"), "questions": ["nope"]}))
    target = tmp_path / "enhancement" / "bad.ipynb"
    target.parent.mkdir()
    target.write_text("previous good output")
    run = run_outputs.Run("enhancement", "bad", NOTEBOOKS / "enhancement.ipynb", bad, target,
                          tmp_path / "enhancement" / "bad")
    with pytest.raises(pm.PapermillExecutionError, match=r"no core question\(s\) \['nope'\]"):
        run_outputs.execute(run, kernel)
    assert target.read_text() == "previous good output"
    assert (tmp_path / "enhancement" / "bad.failed.ipynb").exists()
    assert not list(target.parent.glob(".*.tmp-*"))
    assert not (tmp_path / "enhancement" / "bad").exists()  # no table was written


def test_runner_checks_parameter_files_before_running(tmp_path):
    """A malformed parameter file stops the runner before any notebook starts (the notebooks' own check)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**_smoke_params("theorem"), "rare_sizes": [-5]}))
    run = run_outputs.Run("theorem", "bad", NOTEBOOKS / "theorem.ipynb", bad, tmp_path / "bad.ipynb", tmp_path / "bad")
    with pytest.raises(ValueError, match=r"rare_sizes\[0\]"):
        run_outputs.load_params(run)
    bad.write_text(yaml.safe_dump({"seeds": 3}))
    run = run_outputs.Run("enhancement", "bad", NOTEBOOKS / "enhancement.ipynb", bad, tmp_path / "b.ipynb", tmp_path / "b")
    with pytest.raises(ValueError, match="seeds.*must be a list"):
        run_outputs.load_params(run)
