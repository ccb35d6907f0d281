"""The result store for experiment runs, run metadata and atomic file writes.

Runs are *resumable*.  A study stores one result per key (by default a
:class:`RunKey`: study, dataset, question, seed, method) as soon as it is
computed; a run that is interrupted and started again with the same store
skips every key already stored and computes only the rest.

Layout of a store at ``root``::

    root/store.json                 the run configuration the store was made with (optional)
    root/records/<name>.json        one finished key: {"key": {...}, "record": {...}, "saved_at": ...}
    root/per_subgroup/<name>.csv    its per-subgroup table (optional)

``<name>`` is a file-name-safe reading of the key (``field=value`` pairs in
sorted field order, unsafe characters percent-encoded, long names cut) plus
8 hex digits of a hash of the exact key, so distinct keys never share a file.

Every file is written atomically: to a hidden temporary file in the same
folder (``.<name>.tmp-<random>``), flushed to disk, then renamed over the
target with :func:`os.replace`.  A key counts as done only when its record
file exists, and the record is written *after* its per-subgroup table, so an
interruption at any point leaves either a finished key or none; leftover
temporary files are ignored (and can be deleted with
:meth:`ResultStore.clean_temp`).

Under ``accelerate launch`` (several processes) only the main process writes
(:func:`is_writer`), and :meth:`ResultStore.has` gives every process the main
process's answer (:func:`dsalib.distributed.agreed`), so all processes agree
on what is pending.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from .distributed import agreed, is_main_process
from .errors import DsaError, ParameterError

#: Packages whose versions every run records.
TRACKED_PACKAGES = ("torch", "transformers", "numpy", "pandas", "scipy", "papermill")
#: The folder of the executed reference runs (relative to the repository root).
OUTPUTS_DIR = "outputs"
#: Prefix of temporary files; never read as results.
TEMP_PREFIX = "."
_MAX_READABLE = 120


def _file_mode() -> int:
    """The mode a plainly created file gets (0o666 minus the umask); mkstemp would give 0o600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# --------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------


def is_writer() -> bool:
    """Whether this process writes result files: always in a plain process; under ``accelerate launch``
    only the main process (:func:`dsalib.distributed.is_main_process`).

    Every writer in this module (:func:`atomic_write_bytes` and all that use
    it, :class:`ResultStore`) does nothing on the other processes.
    """
    return is_main_process()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename).

    Only on the writing process (:func:`is_writer`); elsewhere a no-op.
    """
    path = Path(path)
    if not is_writer():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.tmp-", dir=path.parent)
    try:
        os.chmod(tmp, _file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(o: Any):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path, _dt.datetime, _dt.date)):
        return str(o)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"cannot store a {type(o).__name__} in JSON: {o!r}")


def to_json(obj: Any) -> str:
    """JSON text of ``obj`` (numpy scalars/arrays, paths and dataclasses converted; NaN kept)."""
    return json.dumps(obj, indent=2, sort_keys=False, default=_json_default, ensure_ascii=False)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically."""
    return atomic_write_text(path, to_json(obj) + "\n")


def write_csv(df: pd.DataFrame, path: str | os.PathLike, index: bool = False, **kwargs) -> Path:
    """Write a table as CSV to ``path`` atomically (floats at full precision)."""
    buf = io.StringIO()
    df.to_csv(buf, index=index, **kwargs)
    return atomic_write_text(path, buf.getvalue())


# --------------------------------------------------------------------------
# Run metadata
# --------------------------------------------------------------------------


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def code_version(root: str | os.PathLike | None = None) -> dict:
    """The code version of the repository at ``root`` (default: the one ``dsalib`` lives in).

    ``{"describe": ..., "commit": ..., "dirty": bool|None}``; every value is
    ``"unknown"`` (``dirty``: ``None``) outside a git checkout or without git.
    ``dirty`` is true when tracked files outside ``outputs/`` differ from the
    commit (untracked files are listed apart in ``untracked``, as a count).
    """
    root = Path(root) if root is not None else _repo_root()
    commit = _git(["rev-parse", "HEAD"], root)
    if not commit:
        return {"describe": "unknown", "commit": "unknown", "dirty": None, "untracked": None}
    describe = _git(["describe", "--always", "--dirty", "--tags"], root) or commit[:12]
    # outputs/ is what runs write: a regenerated output does not make the code dirty
    status = _git(["status", "--porcelain", "--untracked-files=no", "--", ".", f":(exclude){OUTPUTS_DIR}"], root)
    untracked = _git(["ls-files", "--others", "--exclude-standard"], root)
    return {
        "describe": describe,
        "commit": commit,
        "dirty": None if status is None else bool(status),
        "untracked": None if untracked is None else len([l for l in untracked.splitlines() if l]),
    }


def package_versions(names: Iterable[str] = TRACKED_PACKAGES) -> dict:
    """Installed versions (from package metadata, without importing), ``None`` when absent."""
    out = {}
    for n in names:
        try:
            out[n] = _metadata.version(n)
        except _metadata.PackageNotFoundError:
            out[n] = None
    return out


def run_metadata(**extra) -> dict:
    """What a run's outputs must record about how they were made.

    Code version (:func:`code_version`), ``dsalib`` version, package versions,
    Python and platform, the metric rules (:data:`dsalib.metrics.METRIC_RULES`),
    the UTC time, and every keyword given (e.g. ``params=...``, ``study=...``).
    """
    from . import __version__
    from .metrics import METRIC_RULES

    meta = {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "dsalib_version": __version__,
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "metric_rules": dict(METRIC_RULES),
    }
    clash = sorted(set(extra) & set(meta))
    if clash:
        raise DsaError(f"run_metadata: {clash} are recorded automatically; pass other names")
    meta.update(extra)
    return meta


def write_metadata(output_dir: str | os.PathLike, filename: str = "metadata.json", **extra) -> Path:
    """Write :func:`run_metadata` (with ``extra``) to ``output_dir/filename`` atomically."""
    return write_json(Path(output_dir) / filename, run_metadata(**extra))


# --------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunKey:
    """The unit of a resumable run: one method on one question of one dataset with one seed."""

    study: str
    dataset: str
    question: str
    seed: int
    method: str


_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-+")


def key_dict(key) -> dict:
    """A key as a plain dict of scalars (from a dataclass instance or a mapping)."""
    if dataclasses.is_dataclass(key) and not isinstance(key, type):
        d = dataclasses.asdict(key)
    elif isinstance(key, Mapping):
        d = dict(key)
    else:
        raise DsaError(f"a result key must be a dataclass instance or a dict, got {type(key).__name__}")
    if not d:
        raise DsaError("a result key needs at least one field")
    out = {}
    for k, v in d.items():
        if not isinstance(k, str) or not k:
            raise DsaError(f"result key fields must be non-empty strings, got {k!r}")
        if isinstance(v, np.generic):
            v = v.item()
        if v is not None and not isinstance(v, (str, int, float, bool)):
            raise DsaError(f"result key field '{k}' must be a string, number, bool or None, got {v!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise DsaError(f"result key field '{k}' must be finite, got {v!r}")
        out[k] = v
    return out


def _quote(text: str) -> str:
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in text)


def key_name(key) -> str:
    """The file-name stem of a key: readable ``field=value`` parts plus a hash of the exact key."""
    d = key_dict(key)
    canonical = json.dumps(d, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:8]
    readable = "__".join(f"{_quote(k)}={_quote(str(v))}" for k, v in sorted(d.items()))
    if len(readable) > _MAX_READABLE:
        readable = readable[:_MAX_READABLE].rstrip("%_")
    return f"{readable}-{digest}"


# --------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------


class ResultStore:
    """Per-key results of a run, stored as they finish; see the module docstring.

    ``config``: the settings the results depend on (e.g. the notebook's
    parameters minus ``output_dir``).  The first store opened at ``root``
    records it; opening it again with a different config raises
    :class:`~dsalib.errors.ParameterError` instead of mixing results of two
    set-ups (start a new ``root``, or delete the old one).
    """

    def __init__(self, root: str | os.PathLike, config: Mapping | None = None):
        self.root = Path(root)
        self.records_dir = self.root / "records"
        self.tables_dir = self.root / "per_subgroup"
        if is_writer():
            self.records_dir.mkdir(parents=True, exist_ok=True)
            self.tables_dir.mkdir(parents=True, exist_ok=True)
        if config is not None:
            self._check_config(config)

    # -- configuration ---------------------------------------------------
    def _check_config(self, config: Mapping) -> None:
        path = self.root / "store.json"
        new = json.loads(to_json(dict(config)))
        if path.exists():
            old = json.loads(path.read_text(encoding="utf-8"))["config"]
            if old != new:
                changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise ParameterError(
                    f"the result store at {self.root} was made with other settings "
                    f"(differing: {changed}); use a new output directory or delete {self.root} to start over"
                )
        else:
            write_json(path, {"config": new})

    # -- paths -----------------------------------------------------------
    def record_path(self, key) -> Path:
        return self.records_dir / f"{key_name(key)}.json"

    def table_path(self, key) -> Path:
        return self.tables_dir / f"{key_name(key)}.csv"

    # -- API ---------------------------------------------------------------
    def has(self, key) -> bool:
        """Whether ``key`` has finished (its record file exists).

        Under ``accelerate launch`` the main process's answer holds on every
        process (:func:`dsalib.distributed.agreed`; call it on all of them), so
        all processes agree on what is pending and run the same fits together.
        """
        return agreed(self.record_path(key).exists())

    def save(self, key, record: Mapping, per_subgroup: pd.DataFrame | None = None) -> Path:
        """Store the summary ``record`` (a flat dict of scalars) and optional per-subgroup table of ``key``.

        The table is written first and the record last, each atomically; the
        record's presence marks the key as finished.  Saving a key again
        replaces it.
        """
        kd = key_dict(key)
        if not isinstance(record, Mapping):
            raise DsaError(f"a record must be a dict of summary values, got {type(record).__name__}")
        overlap = sorted(set(record) & set(kd))
        if overlap:
            raise DsaError(f"record fields {overlap} repeat key fields; rename them")
        table = self.table_path(key)
        if per_subgroup is not None:
            if not isinstance(per_subgroup, pd.DataFrame):
                raise DsaError("per_subgroup must be a pandas DataFrame or None")
            write_csv(per_subgroup, table)
        elif table.exists() and is_writer():
            table.unlink()
        payload = {
            "key": kd,
            "record": dict(record),
            "has_per_subgroup": per_subgroup is not None,
            "saved_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        return write_json(self.record_path(key), payload)

    def _record_files(self) -> list[Path]:
        return sorted(p for p in self.records_dir.glob("*.json") if not p.name.startswith(TEMP_PREFIX))

    def _read(self, path: Path) -> dict:
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            payload["key"], payload["record"]
        except (ValueError, KeyError, TypeError) as e:
            raise DsaError(f"the result file {path} is not a valid record ({e}); delete it to recompute that key") from None
        return payload

    def load(self, key) -> dict:
        """The stored record of ``key``."""
        path = self.record_path(key)
        if not path.exists():
            raise DsaError(f"no result stored for {key_dict(key)} in {self.root}")
        return self._read(path)["record"]

    def load_per_subgroup(self, key) -> pd.DataFrame | None:
        """The per-subgroup table of ``key`` (``None`` if it was saved without one)."""
        if not self.has(key):
            raise DsaError(f"no result stored for {key_dict(key)} in {self.root}")
        path = self.table_path(key)
        return pd.read_csv(path) if path.exists() else None

    def keys(self) -> list[dict]:
        """The finished keys, as dicts."""
        return [self._read(p)["key"] for p in self._record_files()]

    def __len__(self) -> int:
        return len(self._record_files())

    def load_all(self) -> pd.DataFrame:
        """All finished keys as one tidy frame: key fields, then the summary values, one row per key."""
        rows, key_cols = [], []
        for p in self._record_files():
            payload = self._read(p)
            for k in payload["key"]:
                if k not in key_cols:
                    key_cols.append(k)
            rows.append({**payload["key"], **payload["record"]})
        if not rows:
            return pd.DataFrame()
        df = pd.DataFrame(rows)
        rest = [c for c in df.columns if c not in key_cols]
        df = df[key_cols + rest]
        try:
            df = df.sort_values(key_cols, kind="stable")
        except TypeError:  # mixed types in a key column
            pass
        return df.reset_index(drop=True)

    def load_all_per_subgroup(self) -> pd.DataFrame:
        """Every stored per-subgroup table, stacked, with the key fields as leading columns."""
        frames = []
        for p in self._record_files():
            payload = self._read(p)
            table = self.tables_dir / f"{p.stem}.csv"
            if payload.get("has_per_subgroup") and table.exists():
                df = pd.read_csv(table)
                for i, (k, v) in enumerate(payload["key"].items()):
                    df.insert(i, k, v)
                frames.append(df)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def pending(self, keys: Iterable) -> list:
        """The keys (of those given) that have not finished yet, in order."""
        return [k for k in keys if not self.has(k)]

    def run(self, keys: Iterable, compute: Callable, progress: Callable[[str], None] | None = print) -> pd.DataFrame:
        """Compute and save every key not stored yet, then return :meth:`load_all`.

        ``compute(key)`` returns a record dict or a ``(record, per_subgroup)``
        pair.  Keys already stored are skipped (that is how a run resumes);
        errors are not caught.
        """
        keys = list(keys)
        todo = self.pending(keys)
        if progress:
            progress(f"{len(keys) - len(todo)} of {len(keys)} results already stored in {self.root}; computing {len(todo)}")
        for i, key in enumerate(todo, 1):
            out = compute(key)
            record, table = out if isinstance(out, tuple) else (out, None)
            self.save(key, record, table)
            if progress:
                progress(f"[{i}/{len(todo)}] {key_dict(key)}")
        return self.load_all()

    def temp_files(self) -> list[Path]:
        """Temporary files left by an interrupted write (ignored by every reader)."""
        return sorted(p for d in (self.root, self.records_dir, self.tables_dir)
                      for p in d.glob(f"{TEMP_PREFIX}*.tmp-*"))

    def clean_temp(self) -> int:
        """Delete leftover temporary files; returns how many."""
        files = self.temp_files()
        for p in files:
            p.unlink(missing_ok=True)
        return len(files)

    def __repr__(self) -> str:
        return f"ResultStore({str(self.root)!r}, finished={len(self)})"


# --------------------------------------------------------------------------
# Output folders and figures
# --------------------------------------------------------------------------


def resolve_output_dir(path: str | os.PathLike) -> Path:
    """An output folder: absolute paths as given, relative ones under the repository root.

    Notebooks run with different working directories (papermill from the
    repository root, Jupyter from ``notebooks/``); resolving against the root
    makes ``output_dir="outputs/theorem/default"`` mean the same folder in both.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise ParameterError(f"output_dir must be a non-empty path, got {path!r}")
    p = Path(path).expanduser()
    return p if p.is_absolute() else _repo_root() / p


def write_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> Path:
    """Save a matplotlib figure atomically (format from the suffix; default dpi 120, tight box)."""
    path = Path(path)
    kw = {"dpi": 120, "bbox_inches": "tight", "format": path.suffix.lstrip(".") or "png"}
    kw.update(savefig_kwargs)
    buf = io.BytesIO()
    fig.savefig(buf, **kw)
    return atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------
# Provenance columns of result tables
# --------------------------------------------------------------------------


def provenance(survey=None, model: str | None = None, option_rule: Mapping | None = None,
               seeds: Iterable[int] | None = None, **extra) -> dict:
    """The columns every result table carries: data source and size, model, option rule, seeds, code version.

    ``survey``: a :class:`dsalib.surveys.Survey` (its name, source and number
    of respondents are recorded); ``option_rule``: e.g.
    :meth:`dsalib.llm_methods.LanguageModel.describe` (recorded as compact
    JSON; ``None`` for studies without a language model); ``extra``: further
    scalar columns (e.g. ``truth_mode="full"``).
    """
    cv = code_version()
    prov = {
        "dataset": survey.name if survey is not None else None,
        "data_source": survey.source_name if survey is not None else None,
        "data_respondents": int(survey.n_respondents) if survey is not None else None,
        "model": model,
        "option_rule": _rule_text(option_rule) if option_rule else None,
        "seeds": " ".join(str(int(s)) for s in seeds) if seeds is not None else None,
        "code_commit": cv["commit"][:12] if cv["commit"] != "unknown" else "unknown",
        "code_dirty": cv["dirty"],
    }
    clash = sorted(k for k in set(extra) & set(prov) if prov[k] is not None)
    if clash:
        raise DsaError(f"provenance: {clash} are set from the other arguments")
    prov.update(extra)
    return prov


def _rule_text(rule: Mapping) -> str:
    """A compact one-line form of an option-reading rule (the full rule is in the run's metadata.json).

    A mapping of several models' rules (``{model: rule}``) gives one entry per model.
    """
    rule = dict(rule)
    if rule and all(isinstance(v, Mapping) for v in rule.values()):
        return " || ".join(f"{m}: {_rule_text(r)}" for m, r in rule.items())
    keys = ("labels", "leading_space", "answer_suffix", "scoring", "normalisation")
    parts = [f"{k}={rule[k]}" for k in keys if k in rule]
    parts += [f"{k}={v}" for k, v in sorted(rule.items()) if k not in keys and k not in ("model", "rule")]
    return "; ".join(parts) if parts else json.dumps(rule, sort_keys=True, default=str)


#: Significant digits of floats in result tables (the stores keep full precision).
TABLE_DIGITS = 8


def scalar_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` without the columns that hold dicts or lists (e.g. training reports; the stores keep them)."""
    nested = [c for c in df.columns if df[c].map(lambda v: isinstance(v, (dict, list))).any()]
    return df.drop(columns=nested)


def write_table(df: pd.DataFrame, path: str | os.PathLike, prov: Mapping, index: bool = False) -> Path:
    """Write a result table as CSV with the provenance columns (:func:`provenance`) appended.

    A column the table already has is left as it is (e.g. a per-row
    ``dataset`` or ``model``), so tables that mix runs keep their own values.
    Floats are written with :data:`TABLE_DIGITS` significant digits.
    """
    out = df.reset_index() if index else df.copy()
    for k, v in prov.items():
        if k not in out.columns:
            out[k] = v
    return write_csv(out, path, float_format=f"%.{TABLE_DIGITS}g")


def glue_figure(name: str, fig) -> None:
    """Glue ``fig`` under ``name`` for the book and display it, both from one PNG rendering, and close it.

    Gluing a figure and then displaying it renders it twice; a figure whose layout settles differently on
    the second draw (e.g. a legend below a constrained layout) then gives two different images, and the
    book references the glued one, which myst-nb writes only when the page shows it. One rendering, shown
    and glued, avoids that.
    """
    import matplotlib.pyplot as plt
    from IPython.display import Image, display
    from myst_nb import glue

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    image = Image(data=buf.getvalue(), format="png")
    glue(name, image, display=False)
    display(image)
    plt.close(fig)


def use_png_figures() -> None:
    """Make displayed and glued matplotlib figures carry a PNG (the book renders glued figures as images)."""
    from matplotlib_inline.backend_inline import set_matplotlib_formats

    set_matplotlib_formats("png")
