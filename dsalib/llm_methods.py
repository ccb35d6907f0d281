"""LLM-based methods: Direct, PE, AAE, TKFT, DSA and LLM-informed shrinkage.

All follow the interface of :mod:`dsalib.baselines`: ``fit(train) -> self`` and
``predict(keys) -> (len(keys), K)`` distributions, for any subgroup keys
(including subgroups absent from the training sample).  A method is built with
the language model handle (:class:`LanguageModel`) and the survey whose
wording the prompts use.

- **Direct**: zero-shot option probabilities of the base model, default prompt.
- **PE**: zero-shot with the persona prompt template.
- **AAE**: a lightweight conditional model on top of the frozen LLM: a
  multinomial logit whose features are the LLM's option log-probabilities for
  the subgroup and the one-hot background, fitted to the training respondents
  (L2 penalty chosen by 5-fold cross-validation).
- **TKFT**: Phase 1 alone (:func:`dsalib.train.run_phase1`).
- **DSA**: Phase 1 then Phase 2 (:func:`dsalib.train.run_phase2`).
- **EB-<prior>**: :class:`dsalib.shrinkage.EBShrinkage` with a fitted LLM
  method as the prior (LLM-informed shrinkage), built by :func:`make_method`.

The option-reading rule (:class:`dsalib.lm.OptionRule`) is the same in
training and evaluation and is reported by :meth:`LanguageModel.describe`.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from . import lm as lm_mod
from . import prompts
from .baselines import _check_keys, _check_train
from .engine import DEFAULT_PREFIX_CACHE_BYTES
from .errors import DsaError
from .surveys import SubgroupTable, Survey, hamming1_pairs, split_counts


@dataclass
class LanguageModel:
    """A loaded causal LM, its tokenizer and how its answers are read."""

    name: str
    model: object
    tokenizer: object
    labels: str = "letters"
    leading_space: bool = True
    answer_suffix: str = "Answer:"
    scoring: str = "single_token"
    batch_size: int = 16
    prefix_cache_dir: str | None = None
    #: Byte budget of the in-memory prefix cache that this model's ``last_layer`` option models share (None:
    #: unbounded; see dsalib.engine.PrefixCache); :meth:`warm_prefix` fills at most half of it without a cache_dir.
    prefix_cache_bytes: int | None = DEFAULT_PREFIX_CACHE_BYTES
    #: Prompts per frozen-prefix pass (default batch_size).
    prefix_batch_size: int | None = None
    #: Wrap every prompt in the tokenizer's chat template (instruct models; :func:`dsalib.prompts.apply_chat_template`).
    #: Off by default: the paper's appendix B prompt as plain text.
    chat_template: bool = False
    #: Extra arguments of the chat template (e.g. ``{"enable_thinking": False}`` for Qwen3).
    chat_template_kwargs: dict = field(default_factory=dict)
    _probs_cache: dict = field(default_factory=dict, repr=False)
    _zero_shot_memo: dict = field(default_factory=dict, repr=False)
    _option_models: dict = field(default_factory=dict, repr=False)
    _prefix_lru: object = field(default=None, repr=False)
    _phase1_memo: dict = field(default_factory=dict, repr=False)
    #: Models fine-tuned on a survey's other questions, by target question (:mod:`dsalib.cross_question`).
    cross_question_models: dict = field(default_factory=dict, repr=False)
    #: How many Phase 1 results :meth:`phase1_memo` keeps (each holds the trainable weights twice).
    phase1_memo_size: int = 4

    @classmethod
    def load(cls, name: str = lm_mod.DEFAULT_MODEL, **kwargs) -> "LanguageModel":
        """Load a model by name; ``prefix_cache_dir`` relative to the repository root (as notebooks give it) or absolute.

        ``device``, ``dtype``, ``cache_dir``, ``trust_remote_code``, ``device_map``, ``max_memory``,
        ``attn_implementation`` and ``offload_folder`` go to :func:`dsalib.lm.load_model`; the rest
        (``batch_size``, ``prefix_cache_dir``, ``prefix_cache_bytes``, ``prefix_batch_size``, label settings)
        to this class.
        """
        load_kw = {k: kwargs.pop(k) for k in ("device", "dtype", "cache_dir", "trust_remote_code", "device_map",
                                              "max_memory", "attn_implementation", "offload_folder") if k in kwargs}
        if kwargs.get("prefix_cache_dir"):
            from .results import resolve_output_dir

            kwargs["prefix_cache_dir"] = str(resolve_output_dir(kwargs["prefix_cache_dir"]))
        model, tok = lm_mod.load_model(name, **load_kw)
        return cls(name=name, model=model, tokenizer=tok, **kwargs)

    @classmethod
    def from_config(cls, cfg, model: str | None = None, **kwargs) -> "LanguageModel":
        """The model of a study configuration (:mod:`dsalib.config`): ``model`` (default ``cfg.model``) with the
        configuration's prefix cache, its budget and batch size, placement and chat template; ``kwargs`` add to
        or override them (e.g. ``device``)."""
        settings = {"prefix_cache_dir": getattr(cfg, "prefix_cache", None),
                    "chat_template": getattr(cfg, "chat_template", False)}
        for name in ("prefix_cache_bytes", "prefix_batch_size", "device_map"):
            if hasattr(cfg, name):
                settings[name] = getattr(cfg, name)
        if settings.get("device_map") is None:
            settings.pop("device_map", None)
        return cls.load(model or cfg.model, **{**settings, **kwargs})

    def rule(self, n_options: int) -> "lm_mod.OptionRule":
        labels = prompts.option_labels(n_options, self.labels)
        return lm_mod.OptionRule(labels=labels, leading_space=self.leading_space,
                                 answer_suffix=self.answer_suffix, scoring=self.scoring)

    def option_probs(self, prompt_list: Sequence[str], n_options: int) -> "lm_mod.OptionProbs":
        """Zero-shot option probabilities (memoised per prompt)."""
        rule = self.rule(n_options)

        def compute(missing):
            res = lm_mod.option_probs(self.model, self.tokenizer, [p for p, _ in missing], rule,
                                      batch_size=self.batch_size)
            return zip(res.probs, res.option_mass)

        rows = memoised(self._probs_cache, [(p, rule) for p in prompt_list], compute)
        return lm_mod.OptionProbs(
            probs=np.array([r[0] for r in rows]).reshape(len(rows), n_options),
            option_mass=np.array([r[1] for r in rows]),
            rule=rule,
        )

    def zero_shot_probs(self, prompt_list: Sequence[str], n_options: int) -> np.ndarray:
        """Option probabilities of the pretrained model.

        With single-token labels this runs through the cached last-layer engine
        at its pretrained weights, so the frozen-prefix pass is shared with the
        fine-tuned methods (the engine checks at ``prepare`` that it matches the
        model's own forward pass to 1e-4); otherwise it uses
        :func:`dsalib.lm.option_probs`.  Each prompt is computed once (memoised).
        """
        if self.scoring != "single_token":
            return self.option_probs(prompt_list, n_options).probs
        rule = self.rule(n_options)

        def compute(missing):
            om, initial = self.option_model(n_options, "last_layer")
            om.load_state_dict(initial)
            om.prepare([p for p, _ in missing])
            p = om.predict().double().cpu().numpy()
            return p / p.sum(axis=1, keepdims=True)

        # memoised per prompt: Direct, PE and AAE ask for the same prompts for every seed and truth
        rows = memoised(self._zero_shot_memo, [(p, rule) for p in prompt_list], compute)
        return np.array(rows).reshape(len(prompt_list), n_options)

    def option_model(self, n_options: int, strategy: str = "last_layer"):
        """The shared trainable :class:`dsalib.engine.OptionModel` for a rule and strategy, and its initial weights.

        ``last_layer`` trains the last block and the option head of this model
        in place (callers restore the initial weights before each fit); its
        frozen-prefix cache is shared by every method, seed and question.
        ``lora`` and ``full`` work on a copy of the model, so the zero-shot
        methods and the cached engine keep the pretrained weights.
        """
        from .engine import OptionModel

        rule = self.rule(n_options)
        key = (rule, strategy)
        if key not in self._option_models:
            base = self.model if strategy == "last_layer" else copy.deepcopy(self.model)
            om = OptionModel(base, self.tokenizer, rule, strategy=strategy, batch_size=self.batch_size,
                             prefix_batch_size=self.prefix_batch_size, cache_dir=self.prefix_cache_dir,
                             prefix_cache_bytes=self.prefix_cache_bytes,
                             prefix_cache=self._shared_prefix_cache() if strategy == "last_layer" else None)
            self._option_models[key] = (om, om.state_dict())
        return self._option_models[key]

    def _shared_prefix_cache(self):
        """The in-memory frozen-prefix cache shared by this model's ``last_layer`` option models (one per rule)."""
        from .engine import PrefixCache

        if self._prefix_lru is None:
            self._prefix_lru = PrefixCache(self.prefix_cache_bytes)
        return self._prefix_lru

    def warm_prefix(self, prompt_list: Sequence[str], n_options: int, progress: bool = False) -> int:
        """Run the frozen prefix of every prompt a run will need, in one pass; returns the prompts computed.

        Prompts of different questions and templates share long openings (a
        subgroup's background block comes first); one pass over all of them
        computes each shared opening once (:mod:`dsalib.prefix_tree`), where
        the methods, asking question by question, could share only within a
        question.  The entries go to the in-memory cache and ``prefix_cache_dir``.
        Without ``prefix_cache_dir``, prompts that do not fit the in-memory
        budget are left to be computed when they are asked for.  Does nothing
        for multi-token scoring (no cached engine), and under ``accelerate
        launch`` with several processes (each prepares its own share of the
        prompts when asked for).  The results are those of
        computing the prompts when asked for, up to float rounding.  ``n_options``:
        the option rule to check the prompts with (e.g. the run's largest).
        """
        from .distributed import process_share

        if self.scoring != "single_token" or not prompt_list or process_share()[1] > 1:
            return 0
        prompt_list = list(dict.fromkeys(prompt_list))
        om, _ = self.option_model(n_options, "last_layer")  # any rule: the frozen prefix is the same for all
        if self.prefix_cache_dir is None and self.prefix_cache_bytes is not None:
            per_token = om.prefix_bytes_per_token()
            lengths = [len(self.tokenizer(p)["input_ids"]) for p in prompt_list]
            budget = self.prefix_cache_bytes // 2  # leave room for what the methods prepare besides
            keep, used = [], 0
            for p, n in zip(prompt_list, lengths):
                if used + n * per_token > budget:
                    break
                keep.append(p)
                used += n * per_token
            prompt_list = keep
        before = om.prefix_computed
        om.prepare(prompt_list, progress=progress)
        return om.prefix_computed - before

    def phase1_memo(self, key, compute):
        """Memoised Phase 1: ``compute()`` once per ``key``, then its stored result.

        TKFT and DSA share Phase 1 exactly (same data, prompts, configuration
        and seed give the same weights), so DSA fitted after TKFT on the same
        training sample reuses TKFT's Phase 1 instead of training it again.
        ``compute`` returns ``(result, state_dict)``; the most recent
        :attr:`phase1_memo_size` keys are kept.
        """
        if key in self._phase1_memo:
            self._phase1_memo[key] = self._phase1_memo.pop(key)  # most recently used last
            return self._phase1_memo[key]
        value = compute()
        self._phase1_memo[key] = value
        while len(self._phase1_memo) > self.phase1_memo_size:
            self._phase1_memo.pop(next(iter(self._phase1_memo)))
        return value

    def build_prompts(self, survey: Survey, question: str, keys, attributes, template: str = "default") -> list[str]:
        """The prompts of subgroups ``keys`` as this model reads them (labels, answer slot, chat template)."""
        return self.format_prompts(prompts.build_prompts(survey, question, keys, attributes, template=template,
                                                         labels=self.labels, answer_suffix=self.answer_suffix))

    def format_prompts(self, prompt_list: Sequence[str]) -> list[str]:
        """``prompt_list`` wrapped in the chat template when :attr:`chat_template` is on, else unchanged."""
        if not self.chat_template:
            return list(prompt_list)
        return [prompts.apply_chat_template(self.tokenizer, p, self.answer_suffix, **self.chat_template_kwargs)
                for p in prompt_list]

    def describe(self, n_options: int | None = None) -> dict:
        d = {"model": self.name, "labels": self.labels, "leading_space": self.leading_space,
             "answer_suffix": self.answer_suffix, "scoring": self.scoring, "chat_template": self.chat_template,
             "normalisation": "softmax over the option-label tokens only"}
        if n_options is not None:
            d["rule"] = self.rule(n_options).to_dict()
        return d


@dataclass
class _PromptedMethod:
    """Shared plumbing: the survey, question and attributes the prompts need."""

    lm: LanguageModel
    survey: Survey
    template: str = "default"
    train: SubgroupTable | None = field(default=None, repr=False)

    def _prompts(self, keys) -> list[str]:
        return self.lm.build_prompts(self.survey, self.train.question, keys, self.train.attributes, self.template)

    def _fit_common(self, train: SubgroupTable) -> None:
        _check_train(train)
        if train.dataset != self.survey.name:
            raise DsaError(f"the training table is from '{train.dataset}' but the method's survey is '{self.survey.name}'")
        self.train = train

    def _require_fit(self):
        if self.train is None:
            raise DsaError("call fit() before predict()")


@dataclass
class Direct(_PromptedMethod):
    """Zero-shot option probabilities of the base model (no training data used)."""

    name: str = "Direct"

    def fit(self, train: SubgroupTable, **context) -> "Direct":
        self._fit_common(train)
        return self

    def predict(self, keys) -> np.ndarray:
        self._require_fit()
        keys = _check_keys(self.train, keys)
        return self.lm.zero_shot_probs(self._prompts(keys), self.train.n_options)

    def option_mass(self, keys) -> np.ndarray:
        """Probability mass on the option tokens before normalisation."""
        keys = _check_keys(self.train, keys)
        return self.lm.option_probs(self._prompts(keys), self.train.n_options).option_mass


def persona(lm: LanguageModel, survey: Survey) -> Direct:
    """PE: zero-shot with the persona template."""
    return Direct(lm=lm, survey=survey, template="persona", name="PE")


@dataclass
class AAE(_PromptedMethod):
    """A conditional model that maps the LLM's output distribution and the background to the training distribution.

    Features of subgroup b: the LLM's option log-probabilities (Direct, default
    prompt) and the one-hot background levels.  A multinomial logit on these
    features is fitted to the training respondents (count-weighted), its L2
    penalty chosen by 5-fold cross-validation (log-loss).
    """

    name: str = "AAE"
    Cs: tuple = (0.01, 0.1, 1.0, 10.0)
    seed: int = 0
    _clf: object = field(default=None, repr=False)
    _classes: np.ndarray | None = field(default=None, repr=False)

    def _features(self, keys: np.ndarray) -> np.ndarray:
        llm = self.lm.zero_shot_probs(self._prompts(keys), self.train.n_options)
        parts = [np.log(np.clip(llm, 1e-9, None))]
        for j, levels in enumerate(self.train.levels):
            parts.append(np.eye(len(levels))[keys[:, j]])
        return np.hstack(parts)

    def fit(self, train: SubgroupTable, **context) -> "AAE":
        from sklearn.linear_model import LogisticRegressionCV

        self._fit_common(train)
        x_sub = self._features(train.keys)
        g, c = np.nonzero(train.counts)
        x, y, w = x_sub[g], c, train.counts[g, c]
        self._classes = np.unique(y)
        if len(self._classes) < 2:
            self._clf = None
            return self
        folds = int(min(5, np.bincount(y).max()))
        from .statistical import _single_thread_blas, cv_jobs

        import inspect

        # scikit-learn >= 1.8 warns unless the L2 penalty (l1_ratios=(0,)) and the new fitted attributes are explicit
        explicit = ({"l1_ratios": (0.0,), "use_legacy_attributes": False}
                    if "use_legacy_attributes" in inspect.signature(LogisticRegressionCV).parameters else {})
        cv = max(2, min(folds, 5))
        # the folds are fitted in parallel processes: the same result as one process, in less time
        self._clf = LogisticRegressionCV(Cs=list(self.Cs), cv=cv, scoring="neg_log_loss", max_iter=2000,
                                         random_state=self.seed, n_jobs=cv_jobs(cv), **explicit)
        from joblib import parallel_config

        # one BLAS thread in each fold's process too, as in this one (the folds' fits do not depend on n_jobs)
        with _single_thread_blas(), parallel_config(backend="loky", inner_max_num_threads=1):
            self._clf.fit(x, y, sample_weight=w)
        return self

    def predict(self, keys) -> np.ndarray:
        self._require_fit()
        keys = _check_keys(self.train, keys)
        out = np.zeros((len(keys), self.train.n_options))
        if self._clf is None:
            out[:, self._classes[0]] = 1.0
            return out
        out[:, self._clf.classes_] = self._clf.predict_proba(self._features(keys))
        return out


#: What happened to DSA's Phase 2 (``report["phase2"]["outcome"]``): it ran; it was skipped because no pair of
#: training subgroups reached ``min_pair_size``; or the validation guard rejected it.
PHASE2_OUTCOMES = ("run", "skipped", "rejected")


@dataclass
class FineTuned(_PromptedMethod):
    """TKFT (``phase2=False``) or DSA (``phase2=True``) on the cached engine.

    Fitting (see :mod:`dsalib.train`):

    1. Split the training sample by respondents into fit and validation parts
       (``phase1.val_fraction``), unless ``phase1.epochs`` fixes the number of
       epochs (the paper: 1).
    2. Phase 1 on the fit part, keeping the epoch count with the lowest
       validation cross-entropy.  DSA then runs Phase 2 on the fit part and
       keeps it only if the validation cross-entropy does not rise
       (``phase2.guard``).
    3. Retrain from the pretrained weights on the whole training sample with
       the chosen settings.

    The report (:attr:`report`) records the chosen epochs, the validation
    curve, and for DSA ``report["phase2"]``: its ``outcome`` (one of
    :data:`PHASE2_OUTCOMES`: ``run``; ``skipped``, no training pair;
    ``rejected``, by the validation guard), beside the pairs, attribute
    changes and steps and the guard's validation cross-entropy before and
    after Phase 2 (``val_ce_before``/``val_ce_after``, from the trial on the
    fit/validation split).  ``report["selection"]["phase2"]`` is that trial's
    own run report.

    Training runs on :func:`dsalib.engine.train_loop`; under ``accelerate
    launch`` every process takes part in every fit (data-parallel) and
    predicts its share of the prompts.
    """

    name: str = "TKFT"
    phase2: bool = False
    strategy: str = "last_layer"
    phase1_config: "Phase1Config" = None
    phase2_config: "Phase2Config" = None
    report: dict = field(default_factory=dict)
    #: Weights to start Phase 1 from instead of the pretrained ones (e.g. a model fine-tuned on the survey's other
    #: questions: a warm start, :mod:`dsalib.cross_question`); a state dict of the same option model.
    init_state: dict | None = field(default=None, repr=False)
    _state: dict | None = field(default=None, repr=False)
    #: The fitted model's option distribution per (prompt, options), so that EB-X, which shrinks toward X,
    #: reuses X's predictions instead of running them again; emptied by every fit.
    _predicted: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        from .train import Phase1Config, Phase2Config

        self.phase1_config = self.phase1_config or Phase1Config()
        self.phase2_config = self.phase2_config or Phase2Config()

    def fit(self, train: SubgroupTable, **context) -> "FineTuned":
        from .train import run_phase1, run_phase2

        self._fit_common(train)
        self._predicted = {}
        om, initial = self.lm.option_model(train.n_options, self.strategy)
        start = initial if self.init_state is None else self.init_state
        om.load_state_dict(start)
        om.prepare(self._prompts(train.keys), n_options=self._row_options(train.keys))
        index = train.index_of  # the prepared prompts are the training table's rows
        c1, c2 = self.phase1_config, self.phase2_config
        rep: dict = {"method": self.name, "strategy": self.strategy, "engine": om.describe()}
        memo_base = (self.strategy, train.n_options, self.template, train.question, tuple(train.attributes),
                     hashlib.sha256(np.ascontiguousarray(train.keys).tobytes()
                                    + np.ascontiguousarray(train.counts).tobytes()).hexdigest(),
                     repr(sorted(asdict(c1).items())), _state_digest(self.init_state))

        def phase1(table, **kw):
            """Phase 1 from the starting weights on ``table`` (memoised: DSA reuses TKFT's run)."""
            def compute():
                om.load_state_dict(start)
                result = run_phase1(om, table, index, c1, **kw)
                return result, om.state_dict()

            if self.strategy == "full":  # a whole model per entry: not worth keeping
                result, state = compute()
            else:
                tag = ("selection", table.n_respondents) if "val" in kw else ("final", kw.get("epochs"))
                result, state = self.lm.phase1_memo(memo_base + tag, compute)
            om.load_state_dict(state)
            return copy.deepcopy(result)

        if c1.epochs is None:
            fit, val = split_counts(train, c1.val_fraction, c1.seed)
            if fit.n_subgroups == 0 or val.n_subgroups == 0:
                raise DsaError(
                    f"the training sample ({train.n_respondents} respondents) is too small to hold out "
                    f"{c1.val_fraction:.0%} for choosing the number of epochs; set a fixed number of epochs"
                )
            r1 = phase1(fit, val=val)
            rep["selection"] = {"phase1_epochs": r1.epochs, "val_ce": r1.val_ce,
                                "fit_respondents": fit.n_respondents, "val_respondents": val.n_respondents}
            if self.phase2:
                trial = run_phase2(om, fit, index, c2, val=val)
                rep["selection"]["phase2"] = asdict(trial)
            epochs = r1.epochs
        else:
            trial = None
            epochs = c1.epochs
        r1 = phase1(train, epochs=epochs)
        rep["phase1"] = asdict(r1)
        if self.phase2:
            rep["phase2"] = self._phase2_final(om, train, index, trial)
        self._state = om.state_dict()
        om.load_state_dict(initial)
        self.report = rep
        return self

    def _row_options(self, keys) -> list[int] | None:
        """Options of each prompt's question when several questions are trained together (None: one question)."""
        return None

    def _phase2_final(self, om, train: SubgroupTable, index, trial) -> dict:
        """Phase 2 on the whole training sample, unless the trial on the fit/validation split rules it out.

        Returns the report's ``phase2`` entry: ``outcome`` is the one field
        that says what happened (:data:`PHASE2_OUTCOMES`), beside the numbers
        behind it (pairs, steps, and the guard's validation cross-entropy
        before and after the trial run).
        """
        from .train import run_phase2

        c2 = self.phase2_config
        guard = ({"val_ce_before": trial.val_ce_before, "val_ce_after": trial.val_ce_after}
                 if trial is not None else {"val_ce_before": None, "val_ce_after": None})
        if trial is not None and trial.pairs == 0:
            return {"outcome": "skipped", "pairs": len(hamming1_pairs(train, c2.min_pair_size)),
                    "steps": 0, **guard, "note": trial.note}
        if trial is not None and c2.guard and trial.val_ce_after > trial.val_ce_before + 1e-6:
            return {"outcome": "rejected", "pairs": len(hamming1_pairs(train, c2.min_pair_size)), "steps": 0,
                    **guard, "note": "Phase 2 raised the validation cross-entropy on the fit/validation split; "
                                     "the final model is the Phase 1 model (guard=True)."}
        r2 = run_phase2(om, train, index, c2)
        entry = {k: v for k, v in asdict(r2).items() if k not in ("val_ce_before", "val_ce_after")}
        return {"outcome": "skipped" if r2.pairs == 0 else "run", **entry, **guard}

    def predict(self, keys) -> np.ndarray:
        self._require_fit()
        keys = _check_keys(self.train, keys)
        return self._predict_prompts(self._prompts(keys), self._row_options(keys))

    def _predict_prompts(self, prompt_list: list[str], n_options: Sequence[int] | None = None) -> np.ndarray:
        """The fitted model's option distributions of ``prompt_list``.

        Under ``accelerate launch`` each process prepares (frozen-prefix pass)
        and predicts only its share of the prompts, and every process gets
        all rows (:func:`dsalib.distributed.gather_shards`).  Each prompt is
        predicted once per fit (memoised).
        """
        import torch

        from .distributed import gather_shards, process_share

        n_opts = [None] * len(prompt_list) if n_options is None else list(n_options)
        keys = list(zip(prompt_list, n_opts))

        def compute(todo):
            om, initial = self.lm.option_model(self.train.n_options, self.strategy)
            om.load_state_dict(self._state)
            rank, world = process_share()
            share = todo[rank::world]
            share_options = None if n_options is None else [k[1] for k in share]
            try:
                if share:
                    local = om.prepare([k[0] for k in share], n_options=share_options).predict()
                elif om.fsdp:  # more processes than prompts: join the sharded model's passes
                    local = om.predict([])
                else:  # more processes than prompts
                    local = torch.zeros((0, self.train.n_options), device=om.device)
                out = gather_shards(local, len(todo)).double().cpu().numpy()
            finally:
                om.load_state_dict(initial)
            return out / out.sum(axis=1, keepdims=True)

        rows = memoised(self._predicted, keys, compute)
        return np.array(rows).reshape(len(keys), self.train.n_options)


def memoised(memo: dict, keys: Sequence, compute) -> list:
    """``memo[k]`` for every key of ``keys``; the missing keys are computed once, together, in first-seen order,
    by ``compute(missing) -> one value per missing key``, and kept in ``memo``."""
    missing = [k for k in dict.fromkeys(keys) if k not in memo]
    if missing:
        values = list(compute(missing))
        if len(values) != len(missing):
            raise DsaError(f"a memoised computation returned {len(values)} values for {len(missing)} keys")
        memo.update(zip(missing, values))
    return [memo[k] for k in keys]


def _state_digest(state: dict | None) -> str:
    """A short hash of a state dict's tensors (the Phase 1 memo tells warm starts apart); "" for None."""
    if state is None:
        return ""
    h = hashlib.sha256()
    sharded = False
    for k in sorted(state):
        h.update(k.encode())
        t = state[k].detach()
        if hasattr(t, "to_local"):  # FSDP: this process's shard
            t, sharded = t.to_local(), True
        h.update(t.float().cpu().numpy().tobytes())
    if sharded:  # every shard decides the key, so all processes hit or miss the memo together (collective)
        from .distributed import gathered

        return hashlib.sha256("".join(gathered(h.hexdigest())).encode()).hexdigest()[:16]
    return h.hexdigest()[:16]


def tkft(lm: LanguageModel, survey: Survey, **kwargs) -> FineTuned:
    return FineTuned(lm=lm, survey=survey, name=kwargs.pop("name", "TKFT"), phase2=False, **kwargs)


def dsa(lm: LanguageModel, survey: Survey, **kwargs) -> FineTuned:
    return FineTuned(lm=lm, survey=survey, name=kwargs.pop("name", "DSA"), phase2=True, **kwargs)
