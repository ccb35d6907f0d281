"""Survey data: loading respondents, subgroup tables, sampling and pairs.

Dataset specs are parsed by :mod:`dsalib.specs` and files are read by
:mod:`dsalib.loaders`; this module re-exports their public names, so
``from dsalib import surveys; surveys.load_spec(...)`` keeps working.

Rules that hold everywhere (written into every run's outputs by
:func:`Survey.describe` and :meth:`SubgroupTable.describe`):

- Option *positions* are the option's rank ``0..K-1`` in the spec's order; the
  raw Wasserstein distance is measured in these units and the scaled one is
  divided by ``K-1``.
- A respondent enters a question's tables only with a valid answer to that
  question and to every background question in use.  Answers that match no
  option or level (missing codes, codes the spec does not list) count as
  missing, unless more than :data:`MAX_UNLISTED_SHARE` of a column's
  non-missing answers match nothing: then the spec does not fit the file and
  loading stops with the codes seen.
- Subgroup distributions are the (optionally weighted) answer counts divided by
  their row sum.
"""

from __future__ import annotations

import itertools
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .errors import DataFileNotFound, DsaError
from .loaders import (  # noqa: F401  (re-exported)
    CSV_SEPARATORS,
    DATA_DIR_ENV,
    find_file,
    read_rdatasets,
    read_table,
    resolve_data_dir,
)
from .specs import (  # noqa: F401  (re-exported)
    REPO_ROOT,
    SPEC_DIR,
    BackgroundQuestion,
    CoreQuestion,
    DatasetSpec,
    Level,
    Option,
    Source,
    available_datasets,
    load_spec,
    parse_spec,
)

#: Subgroups with fewer respondents than this in the truth are not evaluated.
DEFAULT_MIN_EVAL_SIZE = 10
#: Loading stops when more than this share of a column's non-missing codes match no option or level.
MAX_UNLISTED_SHARE = 0.5


class DataWarning(UserWarning):
    """A question, attribute or weight of the spec that the file does not provide (loading goes on)."""


# --------------------------------------------------------------------------
# Loading respondents
# --------------------------------------------------------------------------


def _read_source(spec: DatasetSpec, source: Source, directory: Path) -> tuple[pd.DataFrame, str]:
    if source.kind == "rdatasets":
        frame = read_rdatasets(source, f"{spec.path}: rdatasets source")
        return frame, f"rdatasets {source.package}/{source.item}"
    found = find_file(source, directory)
    if found is None:
        if directory.exists() and not directory.is_dir():
            raise DataFileNotFound(
                f"the data directory {directory} is a file, not a folder. Point data_dir (or ${DATA_DIR_ENV}) "
                f"at the folder that holds one of {', '.join(source.files)}."
            )
        raise DataFileNotFound(
            f"dataset '{spec.name}' needs one of {', '.join(source.files)} in {directory}. "
            f"Download it from {source.archive} (registration required), put it in that "
            f"directory, or point ${DATA_DIR_ENV} (or data_dir=...) at the directory that holds it."
        )
    return read_table(found, sep=source.sep), str(found)


def _label_of(labels: dict, code) -> str | None:
    for key in (code, _as_number(code)):
        if key is not None and key in labels:
            return str(labels[key])
    return None


def _as_number(code):
    try:
        return float(code)
    except (TypeError, ValueError):
        return None


def _describe_codes(values: pd.Series, labels: dict, limit: int = 8) -> str:
    counts = values.value_counts()
    parts = []
    for code, n in counts.head(limit).items():
        code = int(code) if isinstance(code, float) and code.is_integer() else code
        label = _label_of(labels, code)
        parts.append(f"{code!r}{f' ({label})' if label else ''} ×{n}")
    more = f", ... ({len(counts)} distinct)" if len(counts) > limit else ""
    return ", ".join(parts) + more


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
    ``_weight`` (1.0 when the source has no weight).  ``unavailable`` maps each
    question or attribute of the spec that this file cannot provide (and
    ``"weight"`` when the weight column is absent) to the reason.
    """

    spec: DatasetSpec
    source: Source
    source_name: str
    frame: pd.DataFrame
    core: dict
    background: dict
    unavailable: dict = field(default_factory=dict)
    weight: str | None = None  # the weight column in use (None: unweighted only)
    value_labels: dict = field(default_factory=dict)  # column -> {code: label} from the file
    loaded_background: tuple[str, ...] | None = None  # the attributes load_survey was asked for

    def __post_init__(self):
        if self.weight is None and self.source.weight and "weight" not in self.unavailable:
            self.weight = self.source.weight

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def n_respondents(self) -> int:
        return len(self.frame)

    @property
    def default_background(self) -> tuple[str, ...]:
        """The attributes used when none are named: those asked for at loading, else the source's default."""
        return self.loaded_background or self.source.default_background or tuple(self.background)

    def question(self, name: str) -> CoreQuestion:
        if name not in self.core:
            why = f" It is unavailable: {self.unavailable[name]}." if name in self.unavailable else ""
            raise DsaError(
                f"dataset '{self.name}' ({self.source_name}) has no core question '{name}'.{why} "
                f"Available: {', '.join(self.core)}."
            )
        return self.core[name]

    def check_background(self, background: Sequence[str] | None) -> tuple[str, ...]:
        if isinstance(background, str):
            raise DsaError(f"background must be a list of attribute names, got the text {background!r}")
        attrs = tuple(background) if background is not None else self.default_background
        unknown = [a for a in attrs if a not in self.background]
        if unknown:
            why = "".join(f" '{a}' is unavailable: {self.unavailable[a]}." for a in unknown if a in self.unavailable)
            raise DsaError(
                f"dataset '{self.name}' has no background attribute(s) {unknown}.{why} "
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
        out = {
            "dataset": self.name,
            "title": self.spec.title,
            "source": self.source_name,
            "source_kind": self.source.kind,
            "respondents": int(self.n_respondents),
            "weight": self.weight,
            "licence": self.spec.licence,
        }
        if self.unavailable:
            out["unavailable"] = dict(self.unavailable)
        return out


def data_available(name: str, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether :func:`load_survey` can load ``name`` here: it has an embedded source or its archive file is present."""
    spec = load_spec(name)
    directory = resolve_data_dir(data_dir)
    return any(s.kind != "file" or find_file(s, directory) is not None for s in spec.sources)


def _names(value, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise DsaError(f"{what} must be a list of names, got {value!r}")
    if not value:
        raise DsaError(f"{what} is empty; name at least one, or pass None for the spec's default")
    return tuple(value)


def load_survey(
    name: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
    questions: Sequence[str] | None = None,
    background: Sequence[str] | None = None,
) -> Survey:
    """Load a dataset by spec name or spec path.

    ``source``: ``"auto"`` uses the first source that is available (the archive
    file when the user has put it in the data directory, otherwise the
    embedded extract), ``"file"`` requires the archive file, ``"embedded"``
    uses the embedded extract.

    ``questions`` / ``background``: the core questions and background
    attributes the run uses.  Only their columns are required; every missing
    one is reported in a single error.  The spec's other questions and
    attributes are loaded when the file has them and otherwise listed in
    ``survey.unavailable`` (with a :class:`DataWarning`).  With
    ``background=None`` the source's default attributes are required.
    """
    if source not in ("auto", "file", "embedded"):
        raise DsaError(f"source must be 'auto', 'file' or 'embedded', got {source!r}")
    questions = _names(questions, "questions")
    background = _names(background, "background")
    spec = load_spec(name)
    unknown_q = [q for q in questions or () if q not in spec.core]
    unknown_b = [a for a in background or () if a not in spec.background]
    if unknown_q or unknown_b:
        raise DsaError(
            f"dataset '{spec.name}' ({spec.path}) has no "
            + "; no ".join(
                part for part in (
                    f"core question(s) {unknown_q} (it has {', '.join(spec.core)})" if unknown_q else "",
                    f"background attribute(s) {unknown_b} (it has {', '.join(spec.background)})" if unknown_b else "",
                ) if part
            )
        )
    directory = resolve_data_dir(data_dir)
    candidates = [
        s for s in spec.sources
        if source == "auto" or (source == "file") == (s.kind == "file")
    ]
    if not candidates:
        raise DsaError(f"dataset '{spec.name}' has no {source} source; its sources: "
                       f"{', '.join(s.kind for s in spec.sources)}")
    chosen = None
    for s in candidates:
        if s.kind == "file" and find_file(s, directory) is None and len(candidates) > 1:
            continue  # fall back to the embedded extract
        chosen = s
        break
    chosen = chosen or candidates[-1]
    raw, source_name = _read_source(spec, chosen, directory)
    return recode(spec, chosen, raw, source_name, questions=questions, background=background)


def _abridged(columns, limit: int = 30) -> str:
    cols = [str(c) for c in columns]
    shown = ", ".join(cols[:limit])
    return f"{shown}, ... ({len(cols)} columns)" if len(cols) > limit else f"{shown} ({len(cols)} columns)"


def _separator_hint(raw: pd.DataFrame) -> str:
    if raw.shape[1] > 2:
        return ""
    header = " ".join(map(str, raw.columns))
    found = [s for s in CSV_SEPARATORS if s in header]
    if not found:
        return ""
    return (f" The header holds {found[0]!r}: the file is probably {found[0]!r}-separated; set 'sep: \"{found[0]}\"' "
            "in the source (or remove a wrong 'sep' so it is detected).")


def _extends_ref(spec: DatasetSpec) -> str:
    """How an extending spec names this one: a built-in by name, any other by path."""
    p = Path(spec.path)
    return spec.name if p.parent.resolve() == SPEC_DIR.resolve() and p.stem == spec.name else str(p.resolve())


def _unlisted_check(values: pd.Series, valid: np.ndarray, missing: tuple, column: str, labels: dict,
                    what: str, where: str, spec_path: str) -> None:
    answered = values.notna().to_numpy() & ~values.isin(list(missing)).to_numpy()
    unlisted = answered & ~valid
    if answered.sum() and unlisted.sum() / answered.sum() > MAX_UNLISTED_SHARE:
        raise DsaError(
            f"{where}: {unlisted.sum() / answered.sum():.0%} of the non-missing codes in column '{column}' "
            f"({what}) match no option or level of the spec. Codes seen: "
            f"{_describe_codes(values[answered], labels)}. The spec may not fit this file (another edition, "
            f"recoded values, a different variable): fix the options/levels or 'missing' of {what} in {spec_path}."
        )


def recode(
    spec: DatasetSpec,
    source: Source,
    raw: pd.DataFrame,
    source_name: str,
    questions: Sequence[str] | None = None,
    background: Sequence[str] | None = None,
) -> Survey:
    """Map a raw respondent frame to option and level indices (see :class:`Survey` and :func:`load_survey`)."""
    where = f"dataset '{spec.name}' ({source_name})"
    file_labels = dict(raw.attrs.get("value_labels") or {})
    source_core = source.core or tuple(spec.core)
    source_bg = source.background_set or tuple(spec.background)
    not_here = [q for q in questions or () if q not in source_core] + [a for a in background or () if a not in source_bg]
    if not_here:
        raise DsaError(
            f"{where}: this source does not have {not_here}; its questions: {', '.join(source_core)}; "
            f"its background attributes: {', '.join(source_bg)}. Use another source (source='file') or other names."
        )
    want_q = tuple(questions) if questions is not None else source_core
    want_b = tuple(background) if background is not None else source_bg
    required_b = set(background) if background is not None else set(source.default_background or source_bg)
    required_q = set(questions or ())

    columns = set(raw.columns)
    core_cols = {q: source.core_variables.get(q, spec.core[q].variable) for q in want_q}
    bg_specs = {a: source.background.get(a, spec.background[a]) for a in want_b}
    absent = []  # (column, role) the run needs
    unavailable = {}
    for q, col in core_cols.items():
        if col not in columns:
            if q in required_q:
                absent.append((col, f"core question '{q}'"))
            else:
                unavailable[q] = f"column '{col}' is absent from the file"
    for a, bq in bg_specs.items():
        if bq.variable not in columns:
            if a in required_b:
                absent.append((bq.variable, f"background '{a}'"))
            else:
                unavailable[a] = f"column '{bq.variable}' is absent from the file"
    absent += [(c, "filter") for c in source.filters if c not in columns]
    absent += [(c, "expect (round/wave check)") for c in source.expect if c not in columns]
    if absent:
        listed = "; ".join(f"'{c}' ({role})" for c, role in absent)
        raise DsaError(
            f"{where}: {len(absent)} column(s) the run needs are absent from the file: {listed}. "
            f"The file has: {_abridged(raw.columns)}.{_separator_hint(raw)} Check the file is the right edition, "
            f"fix 'variable' (or filters/expect) in {spec.path}, or leave these out: "
            "load_survey(..., questions=[...], background=[...]) needs only the columns it uses."
        )

    for col, allowed in source.filters.items():
        raw = raw[raw[col].isin(list(allowed))]
    if len(raw) == 0:
        raise DsaError(f"{where}: no respondents (after filters {source.filters})")
    raw = raw.reset_index(drop=True)
    for col, allowed in source.expect.items():
        values = raw[col]
        if all(isinstance(v, (int, float)) for v in allowed):
            values = pd.to_numeric(values, errors="coerce")
        seen = sorted(map(str, values.dropna().unique()))[:10]
        if not values.isin(list(allowed)).all():
            raise DsaError(
                f"{where}: column '{col}' has {seen} but the spec expects {list(allowed)} "
                f"(expect: in {spec.path}). The file is probably another round/wave/edition: use the spec for "
                "that round, or extend this spec with the right 'expect'."
            )

    out, core, background_used = {}, {}, {}
    for q, column in core_cols.items():
        if q in unavailable:
            continue
        cq = replace(spec.core[q], variable=column, wording=_substitute(spec.core[q].wording, source.substitutions))
        text_codes = any(isinstance(o.code, str) for o in cq.options)
        values = raw[column].astype("string").str.strip() if text_codes else _numeric_codes(raw, column, where)
        idx = np.full(len(raw), -1, dtype=np.int64)
        for i, opt in enumerate(cq.options):
            idx[(values == (str(opt.code) if text_codes else opt.code)).fillna(False).to_numpy(dtype=bool)] = i
        _unlisted_check(values, idx >= 0, cq.missing, column, file_labels.get(column, {}),
                        f"core question '{q}'", where, spec.path)
        if not (idx >= 0).any():
            reason = (f"column '{column}' has no valid answer (all {len(raw)} values are empty or missing codes "
                      f"{list(cq.missing)})")
            if q in required_q:
                raise DsaError(f"{where}: core question '{q}': {reason}. Choose another question.")
            unavailable[q] = reason
            continue
        out[q] = idx
        core[q] = cq
    for a, bq in bg_specs.items():
        if a in unavailable:
            continue
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
        _unlisted_check(values, idx >= 0, bq.missing, bq.variable, file_labels.get(bq.variable, {}),
                        f"background '{a}'", where, spec.path)
        if not (idx >= 0).any():
            reason = f"column '{bq.variable}' has no valid answer (all values are empty or missing codes)"
            if a in required_b:
                raise DsaError(f"{where}: background '{a}': {reason}. Choose other background attributes.")
            unavailable[a] = reason
            continue
        out[a] = idx
        background_used[a] = bq
    if not core:
        raise DsaError(
            f"{where}: none of the spec's core questions can be loaded from this file "
            f"({'; '.join(f'{q}: {r}' for q, r in unavailable.items())}). The file has: {_abridged(raw.columns)}."
        )

    weight = None
    if source.weight:
        if source.weight not in raw.columns:
            unavailable["weight"] = (
                f"weight column '{source.weight}' (sources: weight: in {spec.path}) is absent from the file; "
                "run unweighted (weighted=False / weighted_truth: false), or write a spec with "
                f"'extends: {_extends_ref(spec)}' whose source sets 'weight: null'"
            )
            out["_weight"] = np.ones(len(raw))
        else:
            w = pd.to_numeric(raw[source.weight], errors="coerce").to_numpy(dtype=float)
            negative = np.isfinite(w) & (w < 0)
            if negative.any():
                raise DsaError(
                    f"{where}: weight column '{source.weight}' has {int(negative.sum())} negative value(s) "
                    f"(e.g. {w[negative][0]!r}); weights must be ≥ 0. Fix the file, or run without weights by "
                    f"writing a spec with 'extends: {_extends_ref(spec)}' whose source sets 'weight: null'."
                )
            usable = np.isfinite(w) & (w > 0)
            if not usable.any():
                raise DsaError(
                    f"{where}: weight column '{source.weight}' has no positive weight (all empty or zero); "
                    f"fix the file, or run without weights ('weight: null' in a spec with 'extends: {_extends_ref(spec)}')."
                )
            out["_weight"] = np.where(usable, w, np.nan)
            weight = source.weight
    else:
        out["_weight"] = np.ones(len(raw))
    if unavailable:
        warnings.warn(
            f"{where}: not available from this file: "
            + "; ".join(f"{k}: {v}" for k, v in unavailable.items()),
            DataWarning,
            stacklevel=3,
        )
    frame = pd.DataFrame(out)
    used_cols = [c for c in [*core_cols.values(), *(b.variable for b in bg_specs.values())] if c in file_labels]
    survey = Survey(spec, source, source_name, frame, core, background_used, unavailable=unavailable,
                    weight=weight, value_labels={c: file_labels[c] for c in used_cols},
                    loaded_background=tuple(background) if background is not None else None)
    return survey


def file_label_check(survey: Survey) -> pd.DataFrame:
    """Spec option labels beside the file's own value labels (SPSS/Stata), one row per option code.

    Read it once for a new file: a reversed or shifted code list shows at a glance.
    Empty for CSV files and extracts (they carry no value labels).
    """
    rows = []
    for q, cq in survey.core.items():
        labels = survey.value_labels.get(cq.variable, {})
        for opt in cq.options:
            rows.append({"question": q, "code": opt.code, "spec_label": opt.label,
                         "file_label": _label_of(labels, opt.code)})
    frame = pd.DataFrame(rows, columns=["question", "code", "spec_label", "file_label"])
    return frame[frame["file_label"].notna()].reset_index(drop=True)



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

    ``units`` (weighted training tables only, see :func:`subgroup_table`'s
    ``size_scaled``): one row per respondent, ``(subgroup row, answer,
    weight)``, so that :func:`split_counts` can split a weighted table by
    respondents.
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
    units: np.ndarray | None = field(default=None, repr=False, compare=False)

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
        mask = np.asarray(mask)
        units = None
        if self.units is not None:
            rows = np.arange(self.n_subgroups)[mask]  # old row of each new row (a boolean mask or positions)
            new_row = np.full(self.n_subgroups, -1)
            new_row[rows] = np.arange(len(rows))
            mapped = new_row[self.units[:, 0].astype(np.int64)]
            units = self.units[mapped >= 0].copy()
            units[:, 0] = mapped[mapped >= 0]
        return replace(self, keys=self.keys[mask], counts=self.counts[mask], n=self.n[mask], units=units)

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
    size_scaled: bool = False,
) -> SubgroupTable:
    """Answer counts per subgroup for ``question``.

    ``respondents``: row positions to use (e.g. a training sample); default all
    eligible respondents.  ``weighted`` uses the source's respondent weight.

    ``size_scaled`` (with ``weighted``; how a weighted *training* table is
    built): each subgroup's weighted counts are rescaled to sum to its number
    of respondents, so its distribution is the weighted one while its size,
    and every method's use of it as a count (count-weighted losses, the
    logits' likelihood, the shrinkage's posterior), stays the number of
    respondents behind it.  The table keeps its respondents (``units``) so it
    can be split by respondents (:func:`split_counts`).
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
    if weighted and not survey.weight:
        why = survey.unavailable.get("weight", "use weighted=False")
        raise DsaError(f"dataset '{survey.name}' ({survey.source_name}) has no respondent weight: {why}")
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
    n = np.bincount(inverse, minlength=len(keys)).astype(np.int64)
    units = None
    if size_scaled:
        if not weighted:
            raise DsaError("size_scaled rescales weighted counts; it needs weighted=True")
        totals = np.bincount(inverse, weights=w, minlength=len(keys))
        if np.any(totals <= 0):
            raise DsaError(f"dataset '{survey.name}': a subgroup of the sample has zero total weight "
                           f"('{survey.weight}'); it cannot have a weighted distribution. Run unweighted.")
        w = w * (n / totals)[inverse]
        units = np.column_stack([inverse, answers, w]).astype(float)
    counts = np.zeros((len(keys), cq.n_options))
    np.add.at(counts, (inverse, answers), w)
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
        units=units,
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
    if len(eligible) == 0:
        raise DsaError(
            f"no respondent of '{survey.name}' ({survey.source_name}) has a valid answer to '{question}' and to "
            f"every background question {list(survey.check_background(background))}; choose other background "
            "attributes or another question."
        )
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
    weighted_train: bool = False,
) -> EnhancementSplit:
    """Draw a training sample and build the ground truth.

    ``mode="full"`` (the paper's): the truth is every eligible respondent, the
    training sample included.  ``mode="heldout"``: the truth is only the
    respondents outside the training sample (honest when ``n`` is a large share
    of the data).  ``weighted``: the truth's distributions use the survey's
    respondent weight; ``weighted_train``: so do the training distributions
    (each subgroup keeps its number of respondents as its size; see
    :func:`subgroup_table`'s ``size_scaled``).
    """
    if mode not in TRUTH_MODES:
        raise DsaError(f"truth mode must be one of {TRUTH_MODES}, got {mode!r}")
    rows = sample_respondents(survey, question, n, seed, background)
    train = subgroup_table(survey, question, background, rows, weighted=weighted_train, size_scaled=weighted_train)
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


def _split_units(table: SubgroupTable, fraction: float, seed: int) -> tuple[SubgroupTable, SubgroupTable]:
    """:func:`split_counts` of a weighted table: each respondent to the second part with probability ``fraction``."""
    rng = np.random.default_rng(seed)
    second = rng.random(len(table.units)) < fraction

    def part(u: np.ndarray) -> SubgroupTable:
        group = u[:, 0].astype(np.int64)
        n = np.bincount(group, minlength=table.n_subgroups)
        totals = np.bincount(group, weights=u[:, 2], minlength=table.n_subgroups)
        keep = n > 0
        new_row = np.cumsum(keep) - 1
        w = u[:, 2] * (n / np.where(totals > 0, totals, 1.0))[group]
        counts = np.zeros((table.n_subgroups, table.n_options))
        np.add.at(counts, (group, u[:, 1].astype(np.int64)), w)
        units = np.column_stack([new_row[group], u[:, 1], w])
        return replace(table, keys=table.keys[keep], counts=counts[keep], n=n[keep].astype(np.int64),
                       meta=dict(table.meta), units=units)

    return part(table.units[~second]), part(table.units[second])


def split_counts(table: SubgroupTable, fraction: float, seed: int) -> tuple[SubgroupTable, SubgroupTable]:
    """Split a table's respondents at random into two tables (e.g. fit / validation).

    Each respondent (one unit of an integer count) goes to the second table
    with probability ``fraction``, independently; subgroups left with no
    respondent are dropped from that table.  Used to choose the number of
    training epochs on data the model did not train on.

    A weighted training table (built with ``size_scaled``) is split the same
    way, respondent by respondent (its ``units``), and each part is again
    rescaled to its own respondents.
    """
    if not 0 < fraction < 1:
        raise DsaError(f"the validation fraction must be between 0 and 1, got {fraction!r}")
    if table.weighted:
        if table.units is None:
            raise DsaError("split_counts needs an unweighted (integer count) table, or a weighted training table "
                           "that keeps its respondents (subgroup_table(..., weighted=True, size_scaled=True))")
        return _split_units(table, fraction, seed)
    counts = np.rint(table.counts).astype(np.int64)
    rng = np.random.default_rng(seed)
    second = rng.binomial(counts, fraction)
    first = counts - second

    def part(c: np.ndarray) -> SubgroupTable:
        keep = c.sum(axis=1) > 0
        return replace(table, keys=table.keys[keep], counts=c[keep].astype(float),
                       n=c[keep].sum(axis=1), meta=dict(table.meta))

    return part(first), part(second)
