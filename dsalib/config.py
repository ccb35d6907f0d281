"""Typed configurations of the studies: one documented dataclass per study notebook.

Every study notebook (``notebooks/<study>.ipynb``) has one configuration class
here whose fields are the notebook's parameters, with the fine-tuning settings
typed as :class:`dsalib.train.Phase1Config` / :class:`~dsalib.train.Phase2Config`:

=====================  ===============================
study                  configuration
=====================  ===============================
``enhancement``        :class:`EnhancementConfig`
``generation``         :class:`GenerationConfig`
``data_efficiency``    :class:`DataEfficiencyConfig`
``unseen_backgrounds`` :class:`UnseenBackgroundsConfig`
``robustness``         :class:`RobustnessConfig`
``ablations``          :class:`AblationsConfig`
``theorem``            :class:`TheoremConfig`
``summary``            :class:`SummaryConfig`
=====================  ===============================

One function builds and checks a configuration from whatever gave the
parameters (the notebook's parameters cell and papermill's ``-p``/``-y``/``-f``,
a parameter file, the API, ``scripts/run_outputs.py``)::

    cfg = config.from_params("enhancement", {"dataset": "gss2018", "methods": ["TS", "MNL"], "seeds": [0]})

Constructing a class directly (``EnhancementConfig(n=300, phase1={"lr": 1e-3})``)
runs the same checks.  Everything that needs no data is checked here, before
any work starts: unknown names (at the top level and inside ``phase1`` /
``phase2``), types (text given where a list is expected is an error that
names papermill's ``-y``; seeds are non-negative integers, not bools, floats
or None), ranges (``min_eval_size`` ≥ 1, a non-empty list of truth modes),
and known methods, templates, strategies and truth modes.  What needs the
data (questions, background attributes, training sizes) is checked by
:func:`dsalib.study.prepare` right after the survey is loaded.

``phase1`` / ``phase2`` may be given as mappings of their fields; the
missing fields take the defaults, so ``phase1={}`` and ``phase1={"lr": 5e-5}``
give the same configuration.  Their ``seed`` field is not a parameter: each
run's seed comes from ``seeds``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from numbers import Integral, Real
from typing import Any, Mapping

from .errors import ParameterError
from .train import Phase1Config, Phase2Config

#: Bump whenever a code change changes stored results: every store key includes it, so old stores are not reused.
STORE_VERSION = 2


def _methods():
    from . import methods

    return methods.ALL


def _templates():
    from .prompts import TEMPLATES

    return TEMPLATES


def _paraphrases():
    from .prompts import PARAPHRASES

    return PARAPHRASES


def _truth_modes():
    from .surveys import TRUTH_MODES

    return TRUTH_MODES


def _strategies():
    from .engine import STRATEGIES

    return STRATEGIES


def _generation_methods():
    from .generation import ALL_METHODS

    return ALL_METHODS


def _efficiency_metrics():
    from .efficiency import METRICS

    return METRICS


def _effects():
    from .theorem import EFFECTS

    return EFFECTS


#: Default byte budget of the in-memory frozen-prefix cache (dsalib.engine.PrefixCache): 8 GiB.
DEFAULT_PREFIX_CACHE_BYTES = 8 * 2**30

#: Where the model's weights go: fields of every study that loads a model.  They change where and how fast a run
#: goes, never its results, so no result store is keyed by them.
MODEL_PLACEMENT_FIELDS = ("prefix_cache_bytes", "prefix_batch_size", "device_map")
_DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def _param(default: Any = dataclasses.MISSING, *, doc: str = "", choices=None, min=None, max=None,
           nonempty: bool = False, distinct: bool = False, **kw):
    """A configuration field: default (lists are copied), documentation and the checks of its value.

    ``choices``: the allowed values (or a function returning them; for a list, of each item);
    ``min``/``max``: bounds (of each item for a list); ``nonempty``/``distinct``: for lists.
    """
    meta = {"doc": doc, "choices": choices, "min": min, "max": max, "nonempty": nonempty, "distinct": distinct}
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: _copy(value), metadata=meta, **kw)
    if default in (Phase1Config, Phase2Config) or callable(default):  # a phase config (or a factory of one)
        return field(default_factory=default, metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def _copy(v):
    return [_copy(x) for x in v] if isinstance(v, list) else dict(v) if isinstance(v, dict) else v


# --------------------------------------------------------------------------
# Checking one value against its annotation
# --------------------------------------------------------------------------


class _Where:
    """Names the parameter in error messages (``study.name``) and says how to pass a list on the command line."""

    def __init__(self, study: str, name: str):
        self.study, self.name = study, name

    def error(self, what: str) -> ParameterError:
        return ParameterError(f"parameter '{self.name}' of the {self.study} study {what}")


def _text_for(where: _Where, kind: str, value) -> ParameterError:
    return where.error(f"must be {kind}, got the text {value!r}; papermill's -p passes text: use "
                       f"-y \"{where.name}: {value}\" or a parameter file (-f)")


def _split_optional(tp):
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _scalar(where: _Where, tp, v, meta):
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, Integral):
            raise where.error(f"must be an integer, got {v!r}")
        v = int(v)
    elif tp is float:
        if isinstance(v, str):  # YAML reads 5e-5 (no dot) as text
            try:
                v = float(v)
            except ValueError:
                raise where.error(f"must be a finite number, got the text {v!r}") from None
        if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(float(v)):
            raise where.error(f"must be a finite number, got {v!r}")
        v = float(v)
    elif tp is bool:
        if not isinstance(v, bool):
            raise where.error(f"must be true or false, got {v!r}")
    elif tp is str:
        if not isinstance(v, str) or not v.strip():
            raise where.error(f"must be a non-empty text, got {v!r}")
    else:  # pragma: no cover - a field with an unsupported annotation is a bug here
        raise TypeError(f"unsupported annotation {tp!r} of {where.name}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and v < lo:
        raise where.error(f"must be ≥ {lo}, got {v!r}")
    if hi is not None and v > hi:
        raise where.error(f"must be ≤ {hi}, got {v!r}")
    choices = meta.get("choices")
    if choices is not None:
        allowed = tuple(choices() if callable(choices) else choices)
        if v not in allowed:
            raise where.error(f"must be one of {', '.join(map(str, allowed))}; got {v!r}")
    return v


def _phase(where: _Where, cls, v):
    if isinstance(v, cls):
        v = dataclasses.asdict(v)
        v.pop("seed", None)
    if isinstance(v, str):
        raise _text_for(where, "a mapping of " + cls.__name__ + " fields", v)
    if v is None:
        v = {}
    if not isinstance(v, Mapping):
        raise where.error(f"must be a mapping of {cls.__name__} fields, got {v!r}")
    known = {f.name: f for f in fields(cls) if f.name != "seed"}
    if "seed" in v:
        raise where.error("must not set seed: each run's seed comes from the 'seeds' parameter")
    unknown = sorted(set(v) - set(known))
    if unknown:
        raise where.error(f"has unknown field(s) {unknown}; {cls.__name__} has {sorted(known)}")
    hints = typing.get_type_hints(cls)
    out = {}
    for k, x in v.items():
        tp, optional = _split_optional(hints[k])
        sub = _Where(where.study, f"{where.name}.{k}")
        if x is None and optional:
            out[k] = None
            continue
        if tp is float and isinstance(x, Integral) and not isinstance(x, bool):
            x = float(x)
        out[k] = _scalar(sub, tp, x, {})
    try:
        cfg = cls(**out)
        cfg.check()
    except ParameterError:
        raise
    except Exception as e:  # the phase configs raise DsaError / ValueError
        raise where.error(f"is invalid: {e}") from None
    return cfg


def _check_value(where: _Where, tp, v, meta):
    tp, optional = _split_optional(tp)
    if v is None:
        if optional:
            return None
        raise where.error("must not be None" + ("; give a list" if typing.get_origin(tp) is list else ""))
    if tp in (Phase1Config, Phase2Config):
        return _phase(where, tp, v)
    if tp is dict or typing.get_origin(tp) is dict:  # a free-form mapping; its class's check() looks inside
        if isinstance(v, str):
            raise _text_for(where, "a mapping", v)
        if not isinstance(v, Mapping):
            raise where.error(f"must be a mapping, got {v!r}")
        return {k: _copy(x) for k, x in v.items()}
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if isinstance(v, str):
            raise _text_for(where, "a list", v)
        if not isinstance(v, (list, tuple)):
            raise where.error(f"must be a list, got {v!r}; on the command line use -y \"{where.name}: [{v}]\"")
        if meta.get("nonempty") and not v:
            raise where.error("must list at least one value")
        out = [_scalar(_Where(where.study, f"{where.name}[{i}]"), item, x, meta) for i, x in enumerate(v)]
        if meta.get("distinct") and len(set(out)) != len(out):
            raise where.error(f"lists a value twice: {out}")
        return out
    return _scalar(where, tp, v, meta)


# --------------------------------------------------------------------------
# The base class
# --------------------------------------------------------------------------


class StudyConfig:
    """Shared behaviour of the study configurations: typed checks on construction, ``from_params``, ``to_params``."""

    #: The notebook (``notebooks/<study>.ipynb``) this configuration belongs to.
    study: typing.ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = _check_value(_Where(self.study, f.name), hints[f.name], getattr(self, f.name), f.metadata)
            object.__setattr__(self, f.name, value)
        self.check()

    def check(self) -> None:
        """Checks across fields (each class adds its own); types and ranges are checked before."""

    @classmethod
    def from_params(cls, params: Mapping | None) -> "StudyConfig":
        """The configuration from a mapping of parameter names to values (missing names take the defaults)."""
        params = {} if params is None else params
        if not isinstance(params, Mapping):
            raise ParameterError(f"the parameters of the {cls.study} study must be a mapping of names to values, "
                                 f"got {params!r}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise ParameterError(f"unknown parameter(s) {unknown} for the {cls.study} study; it has {sorted(names)} "
                                 "(check the spelling in the parameter file or the -p/-y option)")
        return cls(**dict(params))

    def to_params(self) -> dict:
        """The parameters as plain data (the phase configs as mappings without ``seed``)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (Phase1Config, Phase2Config)):
                v = {k: x for k, x in dataclasses.asdict(v).items() if k != "seed"}
            out[f.name] = _copy(v)
        return out

    def replace(self, **changes) -> "StudyConfig":
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)


def _no_duplicates(name: str, study: str, values) -> None:
    if values is not None and len(set(values)) != len(values):
        raise ParameterError(f"parameter '{name}' of the {study} study lists a value twice: {list(values)}")


# --------------------------------------------------------------------------
# The Enhancement protocol and the studies built on it
# --------------------------------------------------------------------------

_DEFAULT_METHODS = ["TS", "MNL", "POLR", "EB-MNL", "Direct", "PE", "AAE", "TKFT", "DSA", "EB-TKFT", "EB-DSA"]


@dataclass
class _PlacementSettings(StudyConfig):
    """Where a study's model runs (:data:`MODEL_PLACEMENT_FIELDS`): never part of a result store's key."""

    prefix_cache_bytes: int | None = _param(DEFAULT_PREFIX_CACHE_BYTES, doc="byte budget of the in-memory "
                                            "frozen-prefix cache (least recently used entries go first); None: "
                                            "unbounded", min=1)
    prefix_batch_size: int | None = _param(None, doc="prompts per frozen-prefix pass; None: the model's batch "
                                           "size (16)", min=1)
    device_map: str | None = _param(None, doc="accelerate placement of the model over the GPUs (and CPU/disk): "
                                    "auto, balanced, balanced_low_0 or sequential; None: one device",
                                    choices=_DEVICE_MAPS)


@dataclass
class _DataSettings(StudyConfig):
    dataset: str = _param("ess9", doc="a dataset spec in params/datasets (or a path to a spec file)")
    questions: list[str] | None = _param(None, doc="core questions; None means every question of the dataset",
                                          nonempty=True, distinct=True)
    background: list[str] | None = _param(None, doc="background attributes; None means the source's default set",
                                           nonempty=True, distinct=True)
    data_dir: str | None = _param(None, doc="folder with downloaded archive files (None: $DSA_DATA_DIR or data/)")
    source: str = _param("auto", doc="which source of the spec: auto, file or embedded",
                         choices=("auto", "file", "embedded"))


@dataclass
class _EnhancementSettings(_DataSettings, _PlacementSettings):
    n: int = _param(500, doc="training sample size", min=1)
    seeds: list[int] = _param([0, 1, 2, 3, 4], doc="one training sample per seed (non-negative integers)",
                              min=0, nonempty=True, distinct=True)
    modes: list[str] = _param(["full", "heldout"], doc="ground truths: full (the paper) and/or heldout; "
                              "each method is fitted once for all", choices=_truth_modes, nonempty=True, distinct=True)
    model: str = _param("smollm2-135m", doc="embedded model name, local path or hub id")
    chat_template: bool = _param(False, doc="wrap prompts in the model's chat template (instruct models); "
                                 "False: the paper's appendix B prompt as plain text")
    phase1: Phase1Config = _param(Phase1Config, doc="dsalib.train.Phase1Config fields, e.g. {lr: 5e-5}")
    phase2: Phase2Config = _param(Phase2Config, doc="dsalib.train.Phase2Config fields, e.g. {min_pair_size: 10}")
    min_eval_size: int = _param(10, doc="smallest truth subgroup that is evaluated", min=1)
    weighted_truth: bool = _param(False, doc="weight the truth by the survey's respondent weights")
    weighted_train: bool = _param(False, doc="weight the training distributions by the survey's respondent "
                                  "weights (each subgroup keeps its respondent count as its size)")
    prefix_cache: str | None = _param("cache/prefix", doc="on-disk cache of frozen-prefix activations; "
                                      "None keeps it in memory only")
    store_root: str | None = _param("cache/runs", doc="shared resumable result stores; None keeps them in output_dir")
    output_dir: str | None = _param(None, doc="where the tables go; None means runs/<study>/<dataset>/ "
                                    "(relative paths are under the repository root)")

    def enhancement(self, **changes) -> "EnhancementConfig":
        """The Enhancement protocol configuration of this study's shared settings, with ``changes``."""
        shared = {f.name: getattr(self, f.name) for f in fields(EnhancementConfig) if hasattr(self, f.name)}
        return EnhancementConfig(**{**shared, **changes})


@dataclass
class EnhancementConfig(_EnhancementSettings):
    """The Enhancement study (``notebooks/enhancement.ipynb``, paper Table 1) and the protocol every
    Enhancement-based study runs (:func:`dsalib.protocol.run_enhancement`).

    For each core question and seed a random sample of ``n`` respondents is the
    training set; every method is fitted once and scored against each truth
    mode in ``modes`` on every subgroup with at least ``min_eval_size`` respondents.
    """

    study: typing.ClassVar[str] = "enhancement"
    methods: list[str] = _param(_DEFAULT_METHODS, doc="methods (dsalib.methods.ALL)", choices=_methods,
                                nonempty=True, distinct=True)
    template: str = _param("default", doc="prompt template of Direct, AAE, TKFT and DSA (PE uses persona)",
                           choices=_templates)
    strategy: str = _param("last_layer", doc="fine-tuning strategy: last_layer, lora or full", choices=_strategies)


@dataclass
class DataEfficiencyConfig(EnhancementConfig):
    """The data-efficiency study (``notebooks/data_efficiency.ipynb``, paper Fig. 3 and 6)."""

    study: typing.ClassVar[str] = "data_efficiency"
    metric: str = _param("jsd_mean", doc="the error compared", choices=_efficiency_metrics)
    ts_sizes: list[int] = _param([50, 100, 150, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500],
                                 doc="the TS grid of training sizes", min=1, nonempty=True, distinct=True)
    ts_n_seeds: int = _param(20, doc="TS samples per grid size (seeds 0, 1, and so on)", min=2)
    curve_sizes: list[int] = _param([100, 250, 500, 1000], doc="training sizes of the methods across sizes",
                                    min=1, nonempty=True, distinct=True)
    curve_methods: list[str] = _param(["TS", "MNL", "AAE", "TKFT", "DSA", "EB-DSA"], doc="methods run across sizes",
                                      choices=_methods, nonempty=True, distinct=True)
    curve_questions: list[str] | None = _param(None, doc="questions of the runs across sizes; None means questions",
                                               nonempty=True, distinct=True)
    curve_seeds: list[int] = _param([0, 1, 2], doc="training samples of the runs across sizes", min=0,
                                    nonempty=True, distinct=True)

    def check(self) -> None:
        if len(self.ts_sizes) < 2:
            raise ParameterError(f"parameter 'ts_sizes' of the {self.study} study needs at least 2 sizes, "
                                 f"got {self.ts_sizes}")


@dataclass
class UnseenBackgroundsConfig(EnhancementConfig):
    """The unseen-backgrounds study (``notebooks/unseen_backgrounds.ipynb``): error by truth-subgroup size."""

    study: typing.ClassVar[str] = "unseen_backgrounds"
    size_bins: list[int] = _param([10, 20, 50, 100], doc="lower edges of the truth-size bins; the last bin is open",
                                  min=1, nonempty=True, distinct=True)
    figure_methods: list[str] = _param(["TS", "MNL", "TKFT", "DSA", "EB-DSA"],
                                       doc="methods drawn in the per-subgroup figure", choices=_methods,
                                       nonempty=True, distinct=True)

    def check(self) -> None:
        extra = [m for m in self.figure_methods if m not in self.methods]
        if extra:
            raise ParameterError(f"parameter 'figure_methods' of the {self.study} study: {extra} must also be in "
                                 f"methods {self.methods}")
        if list(self.size_bins) != sorted(self.size_bins):
            raise ParameterError(f"parameter 'size_bins' of the {self.study} study must be increasing, "
                                 f"got {self.size_bins}")


@dataclass
class RobustnessConfig(_EnhancementSettings):
    """The robustness study (``notebooks/robustness.ipynb``): better-than-TS shares and prompt consistency."""

    study: typing.ClassVar[str] = "robustness"
    methods: list[str] = _param(["Direct", "PE", "AAE", "TKFT", "DSA"],
                                doc="compared with TS (TS and the floor are always included)", choices=_methods,
                                nonempty=True, distinct=True)
    sizes: list[int] = _param([], doc="further training sizes for the better-than-TS share; empty means only n",
                              min=1, distinct=True)
    strategy: str = _param("last_layer", doc="fine-tuning strategy: last_layer, lora or full", choices=_strategies)
    metric: str = _param("jsd", doc="per-subgroup error that decides better or worse",
                         choices=("jsd", "wd", "wd_scaled"))
    templates: list[str] = _param(["default", "para1", "para2", "para3", "para4"],
                                  doc="prompt templates compared (PE has only persona)", choices=_paraphrases,
                                  distinct=True)
    prompt_methods: list[str] = _param(["Direct", "AAE", "TKFT", "DSA"],
                                       doc="methods of the prompt-consistency part; empty skips it", choices=_methods,
                                       distinct=True)
    prompt_questions: list[str] | None = _param(None, doc="questions of the prompt part; None means questions",
                                                nonempty=True, distinct=True)
    prompt_seeds: list[int] = _param([0, 1], doc="training samples of the prompt part", min=0, distinct=True)
    prompt_mode: str = _param("full", doc="truth mode compared across templates", choices=_truth_modes)

    def check(self) -> None:
        where = f"of the {self.study} study"
        if "TS" in self.methods:
            raise ParameterError(f"parameter 'methods' {where}: TS is the reference of the better-than-TS share; "
                                 "leave it out")
        if "PE" in self.prompt_methods:
            raise ParameterError(f"parameter 'prompt_methods' {where}: PE is the persona template by definition and "
                                 "has no paraphrases; leave it out")
        if self.prompt_methods and len(self.templates) < 2:
            raise ParameterError(f"parameter 'templates' {where} must name two or more templates when prompt_methods "
                                 f"is not empty, got {self.templates}")
        if self.prompt_methods and not self.prompt_seeds:
            raise ParameterError(f"parameter 'prompt_seeds' {where} must list at least one seed")

    def run_config(self, n: int | None = None, methods=None, template: str = "default", seeds=None,
                   questions=None) -> EnhancementConfig:
        """The protocol configuration of one part: TS plus ``methods`` at size ``n`` with ``template``."""
        return self.enhancement(n=self.n if n is None else n, methods=["TS"] + list(self.methods if methods is None
                                                                                    else methods),
                                template=template, seeds=self.seeds if seeds is None else seeds,
                                questions=self.questions if questions is None else questions)


@dataclass
class AblationsConfig(_EnhancementSettings):
    """The ablations study (``notebooks/ablations.ipynb``): Phase 1 vs 1+2, fine-tuning strategies, models."""

    study: typing.ClassVar[str] = "ablations"
    subset_questions: list[str] = _param(["imbgeco"], doc="questions of the strategy and model comparisons",
                                         nonempty=True, distinct=True)
    subset_seeds: list[int] = _param([0, 1], doc="training samples of the strategy and model comparisons", min=0,
                                     nonempty=True, distinct=True)
    models: list[str] = _param(["smollm2-135m", "gemma3-270m"],
                               doc="models compared with the default settings; empty skips that part", distinct=True)
    strategies: list[str] = _param(["last_layer", "lora", "full"], doc="fine-tuning strategies compared",
                                   choices=_strategies, distinct=True)
    strategy_methods: list[str] = _param(["TKFT", "DSA"], doc="methods of the strategy rows",
                                         choices=("TKFT", "DSA"), nonempty=True, distinct=True)
    fixed_epochs: int = _param(1, doc="Phase 1 epochs of every strategy row", min=1)
    fixed_lr: float = _param(1e-3, doc="Phase 1 learning rate of the strategy rows", min=0.0, max=1.0)

    #: The methods of the phase and model rows.
    METHODS: typing.ClassVar[tuple] = ("TS", "TKFT", "DSA")

    def check(self) -> None:
        if self.phase1.epochs is not None:
            raise ParameterError(f"parameter 'phase1' of the {self.study} study must not set epochs: the phase and "
                                 "model rows choose them on validation and the strategy rows use fixed_epochs")
        if self.fixed_lr <= 0:
            raise ParameterError(f"parameter 'fixed_lr' of the {self.study} study must be > 0, got {self.fixed_lr}")

    def run_config(self, model: str | None = None, strategy: str = "last_layer", fixed: bool = False,
                   subset: bool = True, methods=None) -> EnhancementConfig:
        """The protocol configuration of one row (``fixed``: Phase 1 at ``fixed_epochs`` and ``fixed_lr``)."""
        p1 = self.phase1 if not fixed else dataclasses.replace(self.phase1, epochs=self.fixed_epochs, lr=self.fixed_lr)
        return self.enhancement(questions=self.subset_questions if subset else self.questions,
                                seeds=self.subset_seeds if subset else self.seeds,
                                methods=list(methods or self.METHODS), model=model or self.model, phase1=p1,
                                strategy=strategy, template="default")


@dataclass
class CrossQuestionConfig(EnhancementConfig):
    """The cross-question prior (``notebooks/cross_question.ipynb``, :mod:`dsalib.cross_question`): a model of the
    survey's other questions as a warm start or a shrinkage prior for a target question, at small training sizes."""

    study: typing.ClassVar[str] = "cross_question"
    methods: list[str] = _param(["TS", "MNL", "EB-MNL", "Stacked-MNL", "TKFT", "XQ", "EB-XQ", "XQ-TKFT"],
                                doc="methods (dsalib.methods.ALL)", choices=_methods, nonempty=True, distinct=True)
    seeds: list[int] = _param([0, 1, 2], doc="one training sample per seed (non-negative integers)", min=0,
                              nonempty=True, distinct=True)
    sizes: list[int] = _param([50, 100, 250, 500], doc="training sizes of the target question", min=1,
                              nonempty=True, distinct=True)
    n: int = _param(100, doc="the training size the report's first table shows (one of sizes)", min=1)

    def check(self) -> None:
        if self.n not in self.sizes:
            raise ParameterError(f"parameter 'n' of the {self.study} study must be one of sizes {self.sizes}, "
                                 f"got {self.n}")


@dataclass
class DsaRegimeConfig(_EnhancementSettings):
    """DSA in the paper's regime (``notebooks/dsa_regime.ipynb``, :mod:`dsalib.regime`): a large survey, n = 4,000,
    a background coarse enough for many respondents per training subgroup; TKFT and DSA variants compared."""

    study: typing.ClassVar[str] = "dsa_regime"
    dataset: str = _param("gss_abortion", doc="a large dataset spec (gss_abortion, wvs_immig, wvs_justifbribe)")
    questions: list[str] | None = _param(["abany"], doc="core questions; None means every question",
                                         nonempty=True, distinct=True)
    background: list[str] | None = _param(["sex", "party", "decade"], doc="background attributes, coarse enough "
                                          "for min_mean_train_size", nonempty=True, distinct=True)
    n: int = _param(4000, doc="training sample size (the paper's 4,000)", min=1)
    baselines: list[str] = _param(["TS", "MNL"], doc="statistical references", choices=_methods, distinct=True)
    paper_phase1: Phase1Config = _param(lambda: Phase1Config(epochs=1, lr=5e-5),
                                        doc="Phase 1 of the paper's setting (one epoch at lr 5e-5)")
    paper_phase2: Phase2Config = _param(lambda: Phase2Config(min_pair_size=10, guard=False),
                                        doc="Phase 2 of the paper's setting (pairs of ≥ 10 respondents, no guard)")
    min_mean_train_size: float = _param(50.0, doc="fewest training respondents per subgroup on average (checked "
                                        "on the first seed's sample before anything runs)", min=1.0)

    def check(self) -> None:
        from . import methods as _m

        llm = [b for b in self.baselines if _m.needs_model(b)]
        if llm:
            raise ParameterError(f"parameter 'baselines' of the {self.study} study lists model-based method(s) "
                                 f"{llm}; the TKFT and DSA rows are the study's own, give statistical methods")
        if self.paper_phase1.epochs is None:
            raise ParameterError(f"parameter 'paper_phase1' of the {self.study} study must fix epochs (the paper: 1)")


# --------------------------------------------------------------------------
# Generation and the theorem
# --------------------------------------------------------------------------


@dataclass
class GenerationConfig(_PlacementSettings):
    """The Generation study (``notebooks/generation.ipynb``, paper Table 2): train once, test on unseen
    questions (NewQ), an unseen population (NewP) and both (Both); see :mod:`dsalib.generation`."""

    study: typing.ClassVar[str] = "generation"
    dataset: str = _param("gss2018", doc="a dataset spec in params/datasets")
    train_questions: list[str] = _param(["natheal", "natcity", "natcrime", "natdrug", "nateduc", "natrace",
                                         "natfare", "natsoc"], doc="training questions", nonempty=True, distinct=True)
    test_questions: list[str] = _param(["natenvir", "natarms", "natsci", "natroad"],
                                       doc="unseen questions (NewQ and Both)", nonempty=True, distinct=True)
    background: list[str] | None = _param(["age", "degree", "party"],
                                          doc="background attributes; must include the held-out one",
                                          nonempty=True, distinct=True)
    heldout_attribute: str = _param("party", doc="the attribute whose held-out levels form the unseen population")
    heldout_levels: list[str] = _param(["Independent"], doc="levels of the unseen population (NewP and Both)",
                                       nonempty=True, distinct=True)
    excluded_levels: list[str] = _param([], doc="levels in neither population (the WVS C3 countries)", distinct=True)
    data_dir: str | None = _param(None, doc="folder with downloaded archive files (None: $DSA_DATA_DIR or data/)")
    source: str = _param("auto", doc="which source of the spec: auto, file or embedded",
                         choices=("auto", "file", "embedded"))
    methods: list[str] = _param(["Direct", "PE", "TKFT", "DSA", "QMean", "Marginal", "TS-drop", "MNL-drop"],
                                doc="methods and references", choices=_generation_methods, nonempty=True,
                                distinct=True)
    model: str = _param("smollm2-135m", doc="embedded model name, local path or hub id")
    chat_template: bool = _param(False, doc="wrap prompts in the model's chat template (instruct models); "
                                 "False: the paper's appendix B prompt as plain text")
    seeds: list[int] = _param([0], doc="one training run per seed", min=0, nonempty=True, distinct=True)
    template: str = _param("default", doc="prompt template of Direct, TKFT and DSA (PE uses persona)",
                           choices=_templates)
    phase1: Phase1Config = _param(Phase1Config, doc="dsalib.train.Phase1Config fields")
    phase2: Phase2Config = _param(Phase2Config, doc="dsalib.train.Phase2Config fields")
    strategy: str = _param("last_layer", doc="fine-tuning strategy", choices=_strategies)
    min_eval_size: int = _param(10, doc="smallest test subgroup that is evaluated", min=1)
    min_train_subgroups: int = _param(2, doc="fewest training subgroups a training question may have", min=1)
    prefix_cache: str | None = _param("cache/prefix", doc="on-disk cache of frozen-prefix activations")
    store_root: str | None = _param("cache/runs", doc="resumable result stores; None keeps them in output_dir")
    output_dir: str | None = _param(None, doc="where the tables go; None means runs/generation/<dataset>/")

    def check(self) -> None:
        both = sorted(set(self.train_questions) & set(self.test_questions))
        if both:
            raise ParameterError(f"test question(s) {both} are also training questions; NewQ needs unseen questions")
        clash = sorted(set(self.heldout_levels) & set(self.excluded_levels))
        if clash:
            raise ParameterError(f"level(s) {clash} are both held out and excluded; list each level once")


@dataclass
class TheoremConfig(StudyConfig):
    """The Theorem 1 study (``notebooks/theorem.ipynb``): synthetic tables, no data and no model."""

    study: typing.ClassVar[str] = "theorem"
    seed: int = _param(0, doc="base seed; table t of a study uses the seed pair (seed, t)", min=0)
    levels: list[int] = _param([2, 3, 4], doc="number of levels of each background attribute", min=2, nonempty=True)
    n_options: int = _param(5, doc="answer options of the core question", min=2)
    effect_scale: float = _param(1.0, doc="standard deviation of the random log-potentials", min=0.0)
    effects: list[str] = _param(["free", "ordinal"], doc="kinds of main effects to study", choices=_effects,
                                nonempty=True, distinct=True)
    n_quantile_levels: int = _param(100, doc="quantile levels of the quantile-mapping operator", min=1)
    interaction_grid: list[float] = _param([0.0, 0.1, 0.25, 0.5, 1.0, 2.0], doc="strengths of the non-factorised term",
                                           min=0.0, nonempty=True, distinct=True)
    n_tables: int = _param(20, doc="random tables per effects kind and interaction strength", min=1)
    finite_interactions: list[float] = _param([0.0, 0.5], doc="interaction strengths of the finite-sample study",
                                              min=0.0, nonempty=True)
    reference_sizes: list[int] = _param([100, 1000], doc="respondents in every non-target subgroup", min=1,
                                        nonempty=True)
    rare_sizes: list[int] = _param([5, 10, 20, 50, 100, 200, 500, 1000], doc="respondents in the rare target subgroup",
                                   min=1, nonempty=True)
    repetitions: int = _param(200, doc="random (table, target, sample) draws per finite-sample setting", min=1)
    smoothing: float = _param(0.5, doc="additive pseudo-count for empirical distributions fed to transfers", min=0.0)
    output_dir: str | None = _param(None, doc="where the tables go; None means runs/theorem/default/")

    def check(self) -> None:
        if len(self.levels) < 2:
            raise ParameterError(f"parameter 'levels' of the {self.study} study needs at least two attributes, "
                                 f"got {self.levels}")
        for name in ("effect_scale", "smoothing"):
            if getattr(self, name) <= 0:
                raise ParameterError(f"parameter '{name}' of the {self.study} study must be > 0, "
                                     f"got {getattr(self, name)}")
        self.interaction_grid = sorted(self.interaction_grid)


@dataclass
class Phase2CheckConfig(StudyConfig):
    """The known-truth check of Phase 2 (``notebooks/phase2_check.ipynb``): synthetic factorised surveys."""

    study: typing.ClassVar[str] = "phase2_check"
    seed: int = _param(0, doc="base seed of the tables and samples", min=0)
    levels: list[int] = _param([2, 3, 4], doc="levels of each background attribute", min=2, nonempty=True)
    n_options: int = _param(5, doc="options of the core question (2-5)", min=2, max=5)
    effect_scale: float = _param(1.0, doc="s.d. of the ordinal main effects", min=0.0)
    imbalance: float = _param(1.0, doc="how unequal the level shares are (0: equal subgroup sizes)", min=0.0)
    per_subgroup: list[int] = _param([5, 20, 50, 150], doc="mean training respondents per subgroup (part 1)", min=1,
                                     nonempty=True, distinct=True)
    interactions: list[float] = _param([0.0, 0.5], doc="strength of the non-factorised term (part 1)", min=0.0,
                                       nonempty=True, distinct=True)
    n_tables: int = _param(10, doc="random tables per cell (part 1)", min=1)
    operators: list[str] = _param(["quantile", "ratio"], doc="Phase 2 operator kinds compared in part 1",
                                  nonempty=True, distinct=True)
    model: str = _param("smollm2-135m", doc="the embedded language model (part 2)")
    llm_per_subgroup: list[int] = _param([20, 150], doc="part 2 grid (empty: skip part 2)", min=1, distinct=True)
    llm_interactions: list[float] = _param([0.0], doc="interaction strengths of part 2", min=0.0, distinct=True)
    llm_tables: int = _param(1, doc="random tables per cell (part 2)", min=1)
    phase1: Phase1Config = _param(Phase1Config, doc="Phase1Config fields (default: epochs chosen on validation data)")
    variants: dict = _param({"DSA": {"guard": False},
                             "DSA-ratio": {"guard": False, "operator": "ratio", "reference": "phase1"}},
                            doc="DSA variants: name -> Phase2Config fields")
    output_dir: str | None = _param(None, doc="where the tables go; None means runs/phase2_check/default/")

    def check(self) -> None:
        from .known_truth import check_params

        check_params(self.to_params())


@dataclass
class SummaryConfig(StudyConfig):
    """The summary (``notebooks/summary.ipynb``): reads the committed Enhancement, robustness and data-efficiency
    tables and the paper's Table 1 (:mod:`dsalib.findings`); runs no experiment."""

    study: typing.ClassVar[str] = "summary"
    enhancement_dir: str = _param("outputs/enhancement", doc="Enhancement runs: <dir>/<dataset>/results.csv")
    robustness_dir: str = _param("outputs/robustness", doc="better-than-TS shares: <dir>/<dataset>/better_than_ts.csv")
    data_efficiency_dir: str = _param("outputs/data_efficiency",
                                      doc="data savings: <dir>/<dataset>/equivalent_sizes.csv")
    datasets: list[str] | None = _param(None, doc="run folders to read; None means every folder with a results.csv",
                                         nonempty=True, distinct=True)
    metric: str = _param("jsd_mean", doc="error measure of the ratios", choices=("jsd_mean", "wd_scaled_mean"))
    paper_table: str = _param("book/_data/paper_table1_enhancement_jsd.csv",
                              doc="the paper's Table 1 in the same measure as metric")
    paper_llms: list[str] = _param(["Qwen3-4B", "Qwen3-32B", "Llama3-8B"], doc="the paper's LLMs shown beside ours",
                                   nonempty=True, distinct=True)
    generation_dir: str = _param("outputs/generation", doc="Generation runs: <dir>/<dataset>/summary.csv")
    paper_generation_table: str = _param("book/_data/paper_table2_generation.csv",
                                         doc="the paper's Table 2 (Generation), set beside ours as ratios to Direct")
    weighting_runs: list[str] = _param(["ess10no", "ess10no_weighted"], doc="the unweighted and the weighted "
                                       "Enhancement run of one dataset compared for survey weights; empty skips it",
                                       distinct=True)
    output_dir: str | None = _param(None, doc="where the tables go; None means runs/summary/default/")

    def check(self) -> None:
        if len(self.weighting_runs) not in (0, 2):
            raise ParameterError(f"parameter 'weighting_runs' of the {self.study} study names the unweighted and the "
                                 f"weighted run (two folders) or nothing; got {self.weighting_runs}")


#: Every study's configuration class, by notebook name.
STUDIES: dict[str, type[StudyConfig]] = {c.study: c for c in (
    EnhancementConfig, GenerationConfig, DataEfficiencyConfig, UnseenBackgroundsConfig, RobustnessConfig,
    AblationsConfig, CrossQuestionConfig, DsaRegimeConfig, TheoremConfig, Phase2CheckConfig, SummaryConfig)}


def config_class(study: str) -> type[StudyConfig]:
    if study not in STUDIES:
        raise ParameterError(f"unknown study {study!r}; the studies are {', '.join(sorted(STUDIES))}")
    return STUDIES[study]


def from_params(study: str, params: Mapping | None) -> StudyConfig:
    """The checked configuration of ``study`` from a mapping of parameters (see the module docstring)."""
    return config_class(study).from_params(params)


def from_notebook(study: str, namespace: Mapping, before: set) -> StudyConfig:
    """The configuration of a notebook run: the names its parameters cell (and papermill) defined.

    ``before``: the names that existed before the parameters cell (so imports
    are not parameters); names starting with ``_`` are ignored.  A misspelt
    override (``-p seedz [0]``) is an unknown parameter, not silently ignored.
    """
    given = {k: namespace[k] for k in namespace if k not in before and not k.startswith("_")}
    return from_params(study, given)
