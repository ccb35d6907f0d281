"""The ``dsa`` command line: run a study, describe a dataset, check a user's own survey spec.

::

    dsa run <study> [--params FILE] [--dataset D] [--model M] [--data-dir DIR]
                    [--set key=value ...] [--name NAME] [--output-dir DIR] [--out-notebook PATH]
    dsa describe <dataset|spec.yaml> [--data-dir DIR] [--question Q] [--background a,b] [--max-rows N]
    dsa check-spec <spec.yaml> --data <file.csv|folder>
    dsa list

``dsa run`` executes ``notebooks/<study>.ipynb`` with papermill's Python API
in the notebooks' own kernel (:mod:`dsalib.kernel`) and streams the kernel's
output (the driver's per-question/seed/method lines, progress bars) to the
terminal as it happens. Every option is checked against the notebook's
``parameters`` cell before the kernel starts. An ad-hoc run writes the
executed notebook to ``runs/<study>/<name>.ipynb`` and its tables to
``runs/<study>/<name>/`` (git-ignored); ``make outputs``
(``scripts/run_outputs.py``) is what writes the committed ``outputs/``.

Exit codes: 0 success; 2 bad arguments (nothing was run); 1 the run or the
check failed (the message says which cell or which input).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
import time
from pathlib import Path

import yaml

from .errors import DsaError

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO_ROOT / "notebooks"
PARAMS = REPO_ROOT / "params"
#: Where ad-hoc runs go (git-ignored): ``runs/<study>/<name>.ipynb`` and ``runs/<study>/<name>/``.
RUNS = REPO_ROOT / "runs"
#: Folders of params/ that hold no study's parameter files.
NOT_STUDIES = {"smoke", "datasets"}
#: Parameter names that take a path the user types relative to their working directory.
PATH_PARAMETERS = ("data_dir",)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(DsaError):
    """The command line itself is wrong: nothing was run (exit code 2)."""


# --------------------------------------------------------------------------
# Parameters of ``dsa run``
# --------------------------------------------------------------------------


def studies() -> list[str]:
    """Studies that have a notebook (``notebooks/<study>.ipynb``)."""
    return sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _exponent_floats(value):
    """``1e-4`` as a number: PyYAML (YAML 1.1) reads a float without a dot as text."""
    if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_exponent_floats(v) for v in value]
    if isinstance(value, dict):
        return {k: _exponent_floats(v) for k, v in value.items()}
    return value


def parse_set(items: list[str]) -> dict:
    """``--set key=value`` options as a dict, each value parsed as YAML (``'[TS, MNL]'`` is a list).

    Unlike plain PyYAML, ``1e-4`` is read as a number (quote it, ``"'1e-4'"``, for text).
    """
    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise UsageError(f"--set {item!r}: write --set name=value (e.g. --set seeds='[0]')")
        if key in out:
            raise UsageError(f"--set {key}=... is given twice")
        try:
            value = yaml.safe_load(text) if text.strip() else None
            quoted = text.strip()[:1] in ("'", '"')
            out[key] = value if quoted else _exponent_floats(value)
        except yaml.YAMLError as exc:
            raise UsageError(f"--set {item!r}: the value is not valid YAML ({str(exc).splitlines()[0]})") from None
    return out


def _suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_value(name: str, value, default, where: str) -> None:
    """Reject a value whose shape cannot be what the parameter's default says (text for a list, text for a number)."""
    def fail(kind: str, example: str):
        raise UsageError(f"{where}: parameter {name!r} must be {kind}, got {value!r} "
                         f"({type(value).__name__}); write it as YAML, e.g. {example}")

    if isinstance(default, (list, tuple)) and value is not None and not isinstance(value, (list, tuple)):
        fail("a list", f"--set {name}='[{value}]'" if not isinstance(value, dict) else f"--set {name}='[a, b]'")
    if isinstance(default, dict) and value is not None and not isinstance(value, dict):
        fail("a mapping", f"--set {name}='{{key: value}}'")
    if isinstance(default, bool):
        if value is not None and not isinstance(value, bool):
            fail("true or false", f"--set {name}=true")
    elif isinstance(default, int) and value is not None and (isinstance(value, (bool, str)) or not isinstance(value, int)):
        fail("an integer", f"--set {name}={default}")
    elif isinstance(default, float) and value is not None and (isinstance(value, (bool, str)) or not isinstance(value, (int, float))):
        fail("a number", f"--set {name}={default}")


def _read_params_file(path: Path) -> dict:
    if not path.is_file():
        raise UsageError(f"--params {path}: no such file")
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"--params {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(params, dict):
        raise UsageError(f"--params {path}: must be a mapping of parameter names to values")
    return params


def _check_dataset(value, data_dir: Path | None) -> str:
    """A dataset name or spec path that can be loaded here (spec paths made absolute)."""
    from . import surveys

    if not isinstance(value, str) or not value:
        raise UsageError(f"dataset must be a dataset name or a spec file, got {value!r}")
    if value.endswith((".yaml", ".yml")):
        p = Path(value).expanduser()
        if not p.is_file():
            raise UsageError(f"dataset spec {value}: no such file")
        value = str(p.resolve())
    elif value not in surveys.available_datasets():
        raise UsageError(f"unknown dataset {value!r}{_suggest(value, surveys.available_datasets())}; known: "
                         f"{', '.join(surveys.available_datasets())}, or give the path of your own spec (.yaml)")
    try:
        ok = surveys.data_available(value, data_dir)
    except DsaError as exc:
        raise UsageError(f"dataset {value}: {exc}") from None
    if not ok:
        spec = surveys.load_spec(value)
        files = [f for s in spec.sources if s.kind == "file" for f in s.files]
        raise UsageError(f"dataset {value!r} needs its data file ({', '.join(files)}) in "
                         f"{surveys.resolve_data_dir(data_dir)}; give --data-dir DIR (the folder that holds it)")
    return value


def resolve_run_params(study: str, params_file: Path | None = None, overrides: dict | None = None,
                       data_dir: Path | None = None, options: dict | None = None) -> dict:
    """The parameters a ``dsa run`` passes to the notebook, checked against its ``parameters`` cell.

    ``overrides`` are the ``--set`` values and ``options`` the dedicated
    options (``{"dataset": ..., "model": ...}`` from ``--dataset``/``--model``);
    both win over the parameter file, and giving a name in both is an error. Raises
    :class:`UsageError` naming the option for an unknown parameter, a value of
    the wrong shape, ``output_dir`` (use ``--output-dir``), or a dataset that
    cannot be loaded here. ``output_dir`` is not set here.
    """
    from .notebook_params import declared_defaults

    if not NOTEBOOKS.is_dir():
        raise UsageError(f"no notebooks folder at {NOTEBOOKS}: dsa run needs a clone of the repository with dsalib "
                         "installed from it in editable mode (make setup, or pip install -e .)")
    known = studies()
    if study not in known:
        raise UsageError(f"unknown study {study!r}{_suggest(study, known)}; studies: {', '.join(known)}")
    defaults = declared_defaults(study)
    sources = []
    if params_file is not None:
        sources.append((f"--params {params_file}", _read_params_file(params_file)))
    sources.append(("--set", dict(overrides or {})))
    for name, value in (options or {}).items():
        if name in (overrides or {}):
            raise UsageError(f"--{name} and --set {name}=... both given; give one")
        sources.append((f"--{name.replace('_', '-')} {value}", {name: value}))
    params: dict = {}
    for where, given in sources:
        for name, value in given.items():
            label = f"{where} {name}=..." if where == "--set" else where
            if name == "output_dir":
                raise UsageError(f"{label}: leave output_dir out; use --output-dir DIR")
            if name == "data_dir" and name not in defaults:
                raise UsageError(f"{label}: the {study} notebook has no parameter data_dir; give the data folder "
                                 "with --data-dir DIR (the kernel gets it as DSA_DATA_DIR)")
            if name not in defaults:
                raise UsageError(f"{label}: the {study} notebook has no parameter {name!r}{_suggest(name, defaults)}; "
                                 f"it declares {', '.join(k for k in defaults if k != 'output_dir')}")
            check_value(name, value, defaults[name], label)
            params[name] = value
    for name in PATH_PARAMETERS:
        if isinstance(params.get(name), str):
            params[name] = str(Path(params[name]).expanduser().resolve())
    if data_dir is not None and "data_dir" in defaults:
        params.setdefault("data_dir", str(data_dir))
    if "dataset" in defaults:
        chosen = params.get("dataset", defaults["dataset"])
        folder = params.get("data_dir", data_dir)
        checked = _check_dataset(chosen, Path(folder) if folder else None)
        if "dataset" in params or checked != chosen:
            params["dataset"] = checked
    return params


def default_run_name(study: str, params_file: Path | None, params: dict) -> str:
    """``runs/<study>/<name>``: the parameter file's name, else the dataset's (a spec path gives its stem)."""
    if params_file is not None:
        return params_file.stem
    if isinstance(params.get("dataset"), str):
        return Path(params["dataset"]).stem if params["dataset"].endswith((".yaml", ".yml")) else params["dataset"]
    return "default"


def run_paths(study: str, name: str, output_dir: Path | None, out_notebook: Path | None) -> tuple[str, Path]:
    """(``output_dir`` parameter, executed-notebook path) of a run.

    Without ``--output-dir`` the tables go to ``runs/<study>/<name>`` (passed
    repository-relative; the notebooks resolve it under the root). The notebook
    goes beside the table folder, as ``<folder>.ipynb``, unless
    ``--out-notebook`` names it.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise UsageError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only (it names runs/{study}/<name>)")
    if output_dir is not None:
        folder = output_dir.expanduser().resolve()
        out_param = str(folder)
    else:
        folder = RUNS / study / name
        # repository-relative (the notebooks resolve it under the root): no machine paths in the parameters
        out_param = str(folder.relative_to(REPO_ROOT)) if folder.is_relative_to(REPO_ROOT) else str(folder)
    notebook = out_notebook.expanduser().resolve() if out_notebook is not None else folder.with_name(folder.name + ".ipynb")
    if notebook.suffix != ".ipynb":
        raise UsageError(f"--out-notebook {out_notebook}: the executed notebook's name must end in .ipynb")
    return out_param, notebook


def _show(p: Path) -> str:
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _format_failure(exc: BaseException) -> str:
    """The failing cell's error in a few lines (no papermill traceback wall)."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        src = [ln for ln in str(exc.source or "").splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        first = f"\n    cell starts: {src[0][:100]}" if src else ""
        return f"cell {exc.cell_index} (In [{exc.exec_count}]) raised {exc.ename}: {exc.evalue}{first}"
    msg = str(exc).strip()
    return f"{type(exc).__name__}: {msg.splitlines()[-1] if msg else ''}"


def cmd_run(args) -> int:
    overrides = parse_set(args.set or [])
    options = {key: getattr(args, key) for key in ("dataset", "model") if getattr(args, key) is not None}
    data_dir = None
    if args.data_dir is not None:
        data_dir = args.data_dir.expanduser().resolve()
        if not data_dir.is_dir():
            raise UsageError(f"--data-dir {args.data_dir}: no such folder")
    params_file = args.params.expanduser().resolve() if args.params else None
    params = resolve_run_params(args.study, params_file, overrides, data_dir, options)
    name = args.name or default_run_name(args.study, params_file, params)
    out_param, notebook = run_paths(args.study, name, args.output_dir, args.out_notebook)
    params["output_dir"] = out_param

    import papermill as pm

    from .kernel import private_kernel

    shown = " ".join(f"{k}={v!r}" for k, v in params.items() if k != "output_dir")
    print(f"dsa run {args.study}: {shown or '(notebook defaults)'}", flush=True)
    print(f"  notebook -> {_show(notebook)}; tables -> {_show(REPO_ROOT / out_param)}", flush=True)
    notebook.parent.mkdir(parents=True, exist_ok=True)
    old_env = os.environ.get("DSA_DATA_DIR")
    if data_dir is not None:
        os.environ["DSA_DATA_DIR"] = str(data_dir)  # the kernel inherits it (surveys.resolve_data_dir)
    t0 = time.perf_counter()
    try:
        with private_kernel() as kernel:
            pm.execute_notebook(
                str(NOTEBOOKS / f"{args.study}.ipynb"),
                str(notebook),
                parameters=params,
                kernel_name=kernel,
                cwd=os.getcwd(),
                progress_bar=False,
                stdout_file=sys.stdout,
                stderr_file=sys.stderr,
                execution_timeout=args.timeout,
            )
    except KeyboardInterrupt:
        print(f"\ndsa run {args.study}: interrupted; the partial notebook is {_show(notebook)}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - reported in a few lines, and the exit code says it failed
        print(f"\ndsa run {args.study}: FAILED after {time.perf_counter() - t0:.1f} s: {_format_failure(exc)}\n"
              f"  the executed notebook, with the full traceback, is {_show(notebook)}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    finally:
        if data_dir is not None:
            if old_env is None:
                os.environ.pop("DSA_DATA_DIR", None)
            else:
                os.environ["DSA_DATA_DIR"] = old_env
    print(f"dsa run {args.study}: done in {time.perf_counter() - t0:.1f} s; notebook {_show(notebook)}; "
          f"tables in {_show(REPO_ROOT / out_param)}", flush=True)
    return EXIT_OK


# --------------------------------------------------------------------------
# describe, check-spec, list
# --------------------------------------------------------------------------


def _dataset_arg(value: str) -> str:
    from . import surveys

    if value.endswith((".yaml", ".yml")):
        if not Path(value).expanduser().is_file():
            raise UsageError(f"spec {value}: no such file")
        return str(Path(value).expanduser().resolve())
    if value not in surveys.available_datasets():
        raise UsageError(f"unknown dataset {value!r}{_suggest(value, surveys.available_datasets())}; known: "
                         f"{', '.join(surveys.available_datasets())}, or give the path of a spec (.yaml)")
    return value


def _data_dir_arg(value: Path | None) -> Path | None:
    if value is None:
        return None
    p = value.expanduser().resolve()
    if not p.is_dir():
        raise UsageError(f"--data-dir {value}: no such folder")
    return p


def _options_text(cq) -> str:
    return " | ".join(cq.option_labels)


def cmd_describe(args) -> int:
    from . import surveys

    dataset = _dataset_arg(args.dataset)
    data_dir = _data_dir_arg(args.data_dir)
    survey = surveys.load_survey(dataset, data_dir)
    d = survey.describe()
    weight = f"weight column {d['weight']}" if d["weight"] else "no weight"
    print(f"dataset      {d['dataset']}: {d['title']}")
    print(f"spec         {survey.spec.path}")
    print(f"source       {d['source']} ({d['respondents']:,} respondents, {weight})")
    if d["licence"]:
        print(f"licence      {d['licence']}")
    print(f"\ncore questions ({len(survey.core)}):")
    for name, cq in survey.core.items():
        valid = int((survey.frame[name] >= 0).sum())
        print(f"  {name}  [column {cq.variable}; {cq.n_options} options; {valid:,} valid answers]")
        print(f"      {cq.wording}")
        print(f"      options: {_options_text(cq)}")
    print(f"\nbackground attributes ({len(survey.background)}; default set: {', '.join(survey.default_background)}):")
    for name, bq in survey.background.items():
        counts = [int((survey.frame[name] == i).sum()) for i in range(len(bq.levels))]
        levels = ", ".join(f"{lv} ({c:,})" for lv, c in zip(bq.level_names, counts))
        print(f"  {name}  [column {bq.variable}]: {levels}")
    question = args.question or next(iter(survey.core))
    background = [a.strip() for a in args.background.split(",") if a.strip()] if args.background else None
    table = surveys.subgroup_table(survey, question, background)
    big = int((table.n >= surveys.DEFAULT_MIN_EVAL_SIZE).sum())
    print(f"\nsubgroup table of {question} by {', '.join(table.attributes)}: {table.n_subgroups} subgroups, "
          f"{table.n_respondents:,} respondents, {big} subgroups with >= {surveys.DEFAULT_MIN_EVAL_SIZE} "
          f"(largest {min(args.max_rows, table.n_subgroups)} shown)")
    print(surveys.format_table(table, max_rows=args.max_rows))
    return EXIT_OK


def _code_counts(values, limit: int = 6) -> str:
    counts = values.value_counts()
    text = ", ".join(f"{code!r} x{n}" for code, n in counts.head(limit).items())
    return text + (f", ... ({len(counts) - limit} more)" if len(counts) > limit else "")


def cmd_check_spec(args) -> int:
    """Load the user's spec and data file through the normal loader and report every column."""
    import pandas as pd

    from . import surveys

    spec_path = Path(args.spec).expanduser()
    if not spec_path.is_file() or spec_path.suffix not in (".yaml", ".yml"):
        raise UsageError(f"spec {args.spec}: no such .yaml file")
    data = args.data.expanduser()
    if not data.exists():
        raise UsageError(f"--data {args.data}: no such file or folder")
    data = data.resolve()
    directory = data if data.is_dir() else data.parent
    spec = surveys.load_spec(str(spec_path.resolve()))  # SpecError: reported by main, exit 1
    patterns = [f for s in spec.sources if s.kind == "file" for f in s.files]
    if not patterns:
        raise DsaError(f"{spec.path}: the spec has no 'kind: file' source, so it reads no file of yours; "
                       "add one (sources: - kind: file, files: [your_file.csv]), see params/datasets/README.md")
    try:
        survey = surveys.load_survey(str(spec_path.resolve()), directory, source="file")
    except surveys.DataFileNotFound as exc:
        hint = (f" The file you gave is named {data.name!r}: list that name (or a pattern that matches it) under "
                f"'files:' in {spec.path}." if data.is_file() else "")
        raise DsaError(f"{exc}{hint}") from None
    used = Path(getattr(survey, "source_path", None) or survey.source_name).resolve()  # the file the loader read
    if data.is_file() and used != data:
        raise DsaError(f"{spec.path}: its 'files:' patterns {patterns} pick {used} in {directory}, not the file you "
                       f"gave ({data.name}); name your file in 'files:' or move the other file away")
    raw = surveys.read_table(used)
    for col, allowed in survey.source.filters.items():  # the rows the loader keeps (surveys.recode)
        raw = raw[raw[col].isin(list(allowed))]
    raw = raw.reset_index(drop=True)
    print(f"spec         {spec.path}")
    print(f"data         {used} ({len(raw):,} rows after the spec's filters)" if survey.source.filters
          else f"data         {used} ({len(raw):,} rows)")

    rows, problems = [], []
    columns = [("core", q, cq.variable) for q, cq in survey.core.items()]
    columns += [("background", a, bq.variable) for a, bq in survey.background.items()]
    for kind, name, column in columns:
        values = raw[column]
        valid = survey.frame[name].to_numpy() >= 0
        blank = values.isna().to_numpy()
        outside = values[~valid & ~blank]
        answered = int((~blank).sum())
        share = len(outside) / answered if answered else 0.0
        rows.append({"kind": kind, "name": name, "column": column, "valid": int(valid.sum()),
                     "valid_share": round(float(valid.mean()), 3) if len(valid) else 0.0, "blank": int(blank.sum()),
                     "outside_spec": len(outside), "outside_share": round(share, 3),
                     "codes_outside_spec": _code_counts(outside) if len(outside) else ""})
        if not valid.any():  # (more than surveys.MAX_UNLISTED_SHARE outside the spec is refused by the loader)
            problems.append(f"{kind} '{name}' (column {column}): no row has a code the spec lists"
                            + (f"; codes seen: {_code_counts(outside)}" if len(outside) else "; the column is empty"))
    if survey.source.weight:
        w = survey.frame["_weight"].to_numpy()
        ok = int(pd.notna(w).sum())
        rows.append({"kind": "weight", "name": survey.source.weight, "column": survey.source.weight, "valid": ok,
                     "valid_share": round(ok / len(w), 3) if len(w) else 0.0, "blank": len(w) - ok,
                     "outside_spec": 0, "outside_share": 0.0, "codes_outside_spec": ""})
    print("\nper column (valid: rows whose code the spec maps to an option or level; outside_spec: codes it does not "
          "list, including missing codes, share of the non-blank rows):")
    print(pd.DataFrame(rows).to_string(index=False))

    if not problems:
        attrs = survey.default_background
        print(f"\nsubgroups by the default background ({', '.join(attrs)}), subgroups with >= "
              f"{surveys.DEFAULT_MIN_EVAL_SIZE} respondents are evaluated:")
        sub = []
        for q in survey.core:
            t = surveys.subgroup_table(survey, q, attrs)
            sub.append({"question": q, "respondents": t.n_respondents, "subgroups": t.n_subgroups,
                        f"subgroups_n>={surveys.DEFAULT_MIN_EVAL_SIZE}": int((t.n >= surveys.DEFAULT_MIN_EVAL_SIZE).sum())})
        print(pd.DataFrame(sub).to_string(index=False))
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    if problems:
        return EXIT_FAILED
    print(f"\nOK: {spec.path} loads {survey.n_respondents:,} respondents from {used.name}")
    return EXIT_OK


def cmd_list(args) -> int:
    from . import surveys

    print("studies (dsa run <study> --params FILE):")
    for s in studies():
        files = sorted(p.name for p in (PARAMS / s).glob("*.yaml"))
        print(f"  {s:20s} params/{s}/: {', '.join(files) if files else '(none)'}")
    others = sorted(d for d in PARAMS.iterdir() if d.is_dir() and d.name not in set(studies()) | NOT_STUDIES
                    and any(d.glob("*.yaml"))) if PARAMS.is_dir() else []
    for d in others:  # e.g. params/paper/<study>-<dataset>-<model>.yaml
        print(f"  {'(other)':20s} params/{d.name}/: {', '.join(sorted(p.name for p in d.glob('*.yaml')))}")
    print("\ndatasets (dsa describe <dataset>):")
    for name in surveys.available_datasets():
        try:
            spec = surveys.load_spec(name)
            here = "available" if surveys.data_available(name) else "needs its archive file in " + str(surveys.resolve_data_dir())
            kinds = "+".join(s.kind for s in spec.sources)
            print(f"  {name:10s} {kinds:18s} {here}: {spec.title}")
        except DsaError as exc:
            print(f"  {name:10s} spec error: {exc}")
    return EXIT_OK


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="dsa",
        description="Distribution Shift Alignment toolkit: run a study notebook, describe a dataset, check a survey spec.",
        epilog="Exit codes: 0 ok, 2 bad arguments (nothing was run), 1 the run or the check failed. "
               "See README.md, section 'Command line'.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="{run,describe,check-spec,list}")

    run = sub.add_parser("run", help="run a study notebook (notebooks/<study>.ipynb) with progress in the terminal",
                         description="Run notebooks/<study>.ipynb through papermill, streaming its output. Every "
                                     "option is checked against the notebook's parameters cell before the kernel "
                                     "starts. Without --output-dir the run goes to runs/<study>/<name>/ and "
                                     "runs/<study>/<name>.ipynb (git-ignored).")
    run.add_argument("study", help="a notebook name: " + ", ".join(studies()))
    run.add_argument("--params", "-f", type=Path, metavar="FILE", help="a parameter file (YAML), e.g. params/enhancement/ess9.yaml")
    run.add_argument("--dataset", help="a dataset name (dsa list) or the path of your own spec (.yaml)")
    run.add_argument("--model", help="an embedded model name, a local model folder or a hub id")
    run.add_argument("--data-dir", type=Path, metavar="DIR", help="the folder with the data file(s) (sets DSA_DATA_DIR)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="a notebook parameter, value parsed as YAML (repeatable): --set methods='[TS, MNL]' --set seeds='[0]'")
    run.add_argument("--name", help="the run's name under runs/<study>/ (default: the parameter file's or dataset's name)")
    run.add_argument("--output-dir", type=Path, metavar="DIR", help="write the tables here instead of runs/<study>/<name>")
    run.add_argument("--out-notebook", type=Path, metavar="PATH", help="the executed notebook (default: <output folder>.ipynb)")
    run.add_argument("--timeout", type=int, metavar="S", help="per-cell timeout in seconds (default: none)")
    run.set_defaults(func=cmd_run)

    desc = sub.add_parser("describe", help="print a dataset's source, questions, background levels and a subgroup table")
    desc.add_argument("dataset", help="a dataset name (dsa list) or the path of a spec (.yaml)")
    desc.add_argument("--data-dir", type=Path, metavar="DIR", help="the folder with the data file (default: $DSA_DATA_DIR or ./data)")
    desc.add_argument("--question", "-q", help="the core question of the subgroup table (default: the first)")
    desc.add_argument("--background", "-b", metavar="A,B", help="background attributes of the table, comma-separated (default: the source's default set)")
    desc.add_argument("--max-rows", type=int, default=20, metavar="N", help="largest subgroups shown (default 20)")
    desc.set_defaults(func=cmd_describe)

    chk = sub.add_parser("check-spec", help="check your own survey spec against your data file",
                         description="Load the data through the spec with the normal loader and report, per question "
                                     "and background attribute, the valid rows and the codes the spec does not list. "
                                     "Exits 1 with the loader's message if it cannot load.")
    chk.add_argument("spec", help="the spec file (.yaml)")
    chk.add_argument("--data", type=Path, required=True, metavar="FILE", help="the data file (or the folder that holds it)")
    chk.set_defaults(func=cmd_check_spec)

    lst = sub.add_parser("list", help="list the studies, their parameter files and the datasets")
    lst.set_defaults(func=cmd_list)
    return ap


def main(argv: list[str] | None = None) -> int:
    """The ``dsa`` entry point; returns the exit code (0 ok, 1 failed, 2 bad arguments)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or an argparse error (2)
        return int(exc.code or 0)
    if getattr(args, "max_rows", 1) < 1:
        print("dsa describe: error: --max-rows must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into e.g. head, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except UsageError as exc:
        print(f"dsa {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DsaError as exc:
        print(f"dsa {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
