#!/usr/bin/env python
"""Regenerate the outputs of the studies: run every notebook with its parameter files.

For every notebook ``notebooks/<study>.ipynb`` and every parameter file
``params/<study>/<name>.yaml`` this runs (with the papermill Python API)::

    papermill notebooks/<study>.ipynb outputs/<study>/<name>.ipynb \\
        -f params/<study>/<name>.yaml -p output_dir outputs/<study>/<name>

``--smoke`` runs ``params/smoke/<study>.yaml`` instead, into a temporary folder
(or ``--out DIR``), as the tests do.

- The executed notebook is written to a hidden temporary name next to its
  target and renamed over it only when the run succeeds, so an interrupted or
  failed run never leaves a corrupt output (a failed run's partial notebook is
  kept as ``<name>.failed.ipynb`` for debugging; the previous good output stays).
- Tables go to ``outputs/<study>/<name>/``; studies that use
  ``dsalib.results.ResultStore`` there resume where an interrupted run stopped.
- Each successful run's wall time goes to ``outputs/run_times.csv`` (one row
  per study and parameter file, replaced when it runs again); the book's
  reproducibility page shows that table.
- Parameter files are checked by the study's configuration
  (:mod:`dsalib.config`, the check the notebooks run first) before anything
  runs: an unknown name, a wrong type or an unknown method is an error.
- Only this script (``make outputs``) writes the committed ``outputs/``; a
  notebook run without ``output_dir`` writes under the git-ignored ``runs/``.
- Notebooks run in the kernel their metadata names (``dsa``, see
  ``dsalib.kernel``), resolved to *this* interpreter by a private kernelspec
  put first on ``JUPYTER_PATH``, whatever user kernels exist; run the script
  with the project's venv.

Examples::

    .venv/bin/python scripts/run_outputs.py                 # every study, every parameter file
    .venv/bin/python scripts/run_outputs.py --study theorem # one study
    .venv/bin/python scripts/run_outputs.py --smoke         # the small parameter sets, into a temp dir
    .venv/bin/python scripts/run_outputs.py --list          # what would run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # dsalib without an installed package
    sys.path.insert(0, str(REPO_ROOT))
from dsalib.kernel import KERNEL_NAME, private_kernel  # noqa: E402  (the notebooks' kernel, resolved to this interpreter)
NOTEBOOKS = REPO_ROOT / "notebooks"
PARAMS = REPO_ROOT / "params"
OUTPUTS = REPO_ROOT / "outputs"
#: Folders of params/ that hold no study's parameter files.
NOT_STUDIES = {"smoke", "datasets"}


@dataclass(frozen=True)
class Run:
    study: str
    name: str
    notebook: Path
    params_file: Path
    output_notebook: Path
    output_dir: Path


def studies() -> list[str]:
    """Studies that have a notebook (``notebooks/<study>.ipynb``)."""
    return sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


def discover(smoke: bool = False, only: list[str] | None = None, names: list[str] | None = None,
             out_root: Path | None = None) -> list[Run]:
    """The runs to do: (notebook, parameter file) pairs, filtered by study and parameter-set name."""
    known = studies()
    if only:
        unknown = sorted(set(only) - set(known))
        if unknown:
            raise SystemExit(f"unknown study {unknown}; notebooks/ has {known}")
    runs = []
    root = out_root if out_root is not None else OUTPUTS
    for study in only or known:
        nb = NOTEBOOKS / f"{study}.ipynb"
        files = [PARAMS / "smoke" / f"{study}.yaml"] if smoke else sorted((PARAMS / study).glob("*.yaml"))
        for f in files:
            if not f.exists() or (names and f.stem not in names):
                continue
            name = "smoke" if smoke else f.stem
            runs.append(Run(study, name, nb, f, root / study / f"{name}.ipynb", root / study / name))
    return runs


def load_params(run: Run) -> dict:
    """The parameter file, checked by the study's configuration (dsalib.config) before anything runs.

    The same check the notebook runs first: unknown names, types, ranges, known
    methods/templates/strategies/truth modes.  ``output_dir`` is the runner's.
    """
    from dsalib import config

    with open(run.params_file, encoding="utf-8") as fh:
        params = yaml.safe_load(fh) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{run.params_file} must be a mapping of parameter names to values")
    if "output_dir" in params:
        raise ValueError(f"{run.params_file}: leave output_dir out; the runner sets it")
    try:
        config.from_params(run.study, {**params, "output_dir": _show(run.output_dir)})
    except config.ParameterError as e:
        raise ValueError(f"{_show(run.params_file)}: {e}") from None
    return params


def _record_paths(path: Path, run: Run) -> None:
    """Papermill records the temporary file as the output path; record the real (repository-relative) ones."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    pm_meta = nb.metadata.setdefault("papermill", {})
    pm_meta["input_path"] = _show(run.notebook)
    pm_meta["output_path"] = _show(run.output_notebook)
    pm_meta["parameters_file"] = _show(run.params_file)
    nbformat.write(nb, str(path))


def _remove_stale_temps(target: Path) -> None:
    for p in target.parent.glob(f".{target.name}.tmp-*"):
        p.unlink(missing_ok=True)


def execute(run: Run, kernel_name: str = KERNEL_NAME, log_output: bool = False, timeout: int | None = None) -> None:
    """Run one notebook with papermill; the executed notebook appears atomically at ``run.output_notebook``."""
    import papermill as pm

    params = load_params(run)
    # repository-relative when possible (the notebook resolves it under the root): no machine paths in outputs
    params["output_dir"] = _show(run.output_dir)
    target = run.output_notebook
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", suffix=".ipynb", dir=target.parent)
    os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes it 0o600; outputs are ordinary files
    try:
        pm.execute_notebook(
            str(run.notebook),
            tmp,
            parameters=params,
            kernel_name=kernel_name,
            cwd=str(REPO_ROOT),
            progress_bar=False,
            log_output=log_output,
            execution_timeout=timeout,
        )
    except BaseException:
        failed = target.with_name(f"{target.stem}.failed.ipynb")
        if Path(tmp).exists():
            os.replace(tmp, failed)
            print(f"    partial notebook kept at {failed.relative_to(REPO_ROOT) if failed.is_relative_to(REPO_ROOT) else failed}",
                  flush=True)
        raise
    _record_paths(Path(tmp), run)
    os.replace(tmp, target)
    target.with_name(f"{target.stem}.failed.ipynb").unlink(missing_ok=True)


def missing_data(params: dict) -> str | None:
    """Why a parameter file cannot run here (its dataset needs an archive file that is absent), or None.

    Parameter files for the full archive datasets (e.g. params/generation/wvs.yaml) live beside the
    embedded reference runs; they run once a user has put the file in the data folder.
    """
    from dsalib import surveys

    name = params.get("dataset")
    if not isinstance(name, str) or surveys.data_available(name, params.get("data_dir")):
        return None
    return (f"dataset '{name}' needs its archive file in {surveys.resolve_data_dir(params.get('data_dir'))} "
            f"(see params/datasets/{name}.yaml)")


def record_time(run: Run, seconds: float, out_root: Path) -> None:
    """Add (or replace) this run's row in ``<out_root>/run_times.csv`` (written atomically)."""
    import datetime as dt
    import platform

    import pandas as pd

    from dsalib.results import code_version, write_csv

    path = out_root / "run_times.csv"
    old = pd.read_csv(path) if path.exists() else pd.DataFrame()
    if len(old):
        old = old[~((old["study"] == run.study) & (old["name"] == run.name))]
    row = pd.DataFrame([{
        "study": run.study, "name": run.name, "seconds": round(seconds, 1),
        "finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "code_commit": code_version()["commit"][:12],
    }])
    table = pd.concat([old, row], ignore_index=True).sort_values(["study", "name"])
    write_csv(table, path)


def _show(p: Path) -> str:
    return str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else str(p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", action="append", help="run only this study (repeatable); default: all")
    ap.add_argument("--name", action="append", help="run only the parameter file params/<study>/<NAME>.yaml (repeatable)")
    ap.add_argument("--smoke", action="store_true", help="run params/smoke/<study>.yaml into a temporary folder")
    ap.add_argument("--out", type=Path, help="output root instead of outputs/ (default with --smoke: a new temp dir)")
    ap.add_argument("--list", action="store_true", help="list the runs and exit")
    ap.add_argument("--keep-going", action="store_true", help="after a failed run, go on with the others")
    ap.add_argument("--log-output", action="store_true", help="stream the notebooks' cell output")
    ap.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default: none)")
    args = ap.parse_args(argv)

    out_root = args.out.resolve() if args.out else None
    if args.smoke and out_root is None:
        out_root = Path(tempfile.gettempdir()) / "dsa-smoke-XXXX" if args.list else Path(tempfile.mkdtemp(prefix="dsa-smoke-"))
    runs = discover(args.smoke, args.study, args.name, out_root)
    if not runs:
        print("nothing to run (no notebook with a matching parameter file)")
        return 1
    if args.list:
        for r in runs:
            why = missing_data(load_params(r))
            print(f"{r.study:12s} {_show(r.params_file):40s} -> {_show(r.output_notebook)}"
                  + (f"  (skipped: {why})" if why else ""))
        return 0
    skipped = []
    for r in list(runs):  # check every parameter file before running anything
        missing = missing_data(load_params(r))
        if missing:
            runs.remove(r)
            skipped.append(r)
            print(f"skipping {r.study}/{r.name}: {missing}")
    if not runs:
        print("nothing to run")
        return 1

    failures, ok = [], []
    t_all = time.perf_counter()
    with private_kernel() as kernel:
        for i, r in enumerate(runs, 1):
            print(f"[{i}/{len(runs)}] {r.study}/{r.name}: {_show(r.notebook)} -f {_show(r.params_file)} "
                  f"-> {_show(r.output_notebook)}", flush=True)
            t0 = time.perf_counter()
            try:
                execute(r, kernel, args.log_output, args.timeout)
            except Exception as e:  # noqa: BLE001 - reported, and the exit code says it failed
                dt = time.perf_counter() - t0
                print(f"    FAILED after {dt:.1f} s: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}",
                      flush=True)
                failures.append(r)
                if not args.keep_going:
                    if i < len(runs):
                        print(f"    stopping; {len(runs) - i} run(s) not started (use --keep-going to go on)")
                    break
                continue
            ok.append(r)
            dt_run = time.perf_counter() - t0
            if not args.smoke:
                record_time(r, dt_run, out_root if out_root is not None else OUTPUTS)
            print(f"    done in {dt_run:.1f} s; tables in {_show(r.output_dir)}", flush=True)
    total = time.perf_counter() - t_all
    print(f"{len(ok)} of {len(runs)} run(s) ok; total {total:.1f} s"
          + (f"; outputs under {out_root}" if out_root else ""))
    if failures:
        print("failed: " + ", ".join(f"{r.study}/{r.name}" for r in failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
