"""The Generation task (paper section 3.4, Table 2): train once, test on unseen questions and populations.

One model is trained on many (question, subgroup) distributions of a
*training set* (training questions, answered by the *training population*)
and then predicts, with no further adaptation,

- **NewQ**: unseen questions, training population;
- **NewP**: training questions, an unseen population;
- **Both**: unseen questions and an unseen population.

A population is defined by a held-out background attribute: respondents whose
level of ``heldout_attribute`` is one of ``heldout_levels`` form the unseen
population; everyone else is the training population, except respondents
with a level in ``excluded_levels`` (in neither; e.g. the WVS C3 countries).
The held-out attribute stays in every prompt, so an unseen population's prompts name a level the
model never saw in training (as an unseen country does in the WVS split of
Cao et al., see ``params/generation/wvs.yaml``).

Multi-question fine-tuning (TKFT, DSA) reuses :class:`dsalib.llm_methods.FineTuned`
(and through it :func:`dsalib.train.run_phase1` / :func:`~dsalib.train.run_phase2`
and :class:`dsalib.engine.OptionModel`) on one *stacked* subgroup table
(:func:`stack_tables`): its first key column is the question, and every
background level index is offset by the question (``q * L_j + level``).  So

- Phase 1 sums the loss over every training (question, subgroup) pair, and
  epochs are chosen on held-out training respondents exactly as for one
  question (``FineTuned``: respondents split into fit/validation parts);
- Phase 2's Hamming-1 pairs are pairs of subgroups *within one question* (two
  rows of different questions differ in the question column and in every
  offset level, so never at Hamming distance 1), and its quantile-mapping
  operators are estimated per question and attribute change.

All questions must share the number of options (one option head); the option
reading rule is the language model's (:meth:`LanguageModel.describe`), the
same in training and prediction.

Honest references that use no language model (each uses only the training set):

- ``QMean`` (NewQ, Both): the mean over training questions of the subgroup's
  training distribution (questions share an answer scale); for Both the
  held-out attribute is dropped before matching (the subgroup is unseen).
  Subgroups absent from a training table fall back to that question's marginal.
- ``Marginal`` (all splits): the training population's answer distribution
  (NewP: of the same question; NewQ/Both: averaged over training questions).
- ``TS-drop`` (NewP): the training population's distribution of the subgroup
  with the held-out attribute dropped.
- ``MNL-drop`` (NewP): a main-effects multinomial logit per question fitted on
  the training population without the held-out attribute
  (:class:`dsalib.statistical.MainEffectsLogit`).
- ``floor``: the noise floor of each test truth (:func:`dsalib.baselines.noise_floor`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import baselines, prompts, surveys
from .config import MODEL_PLACEMENT_FIELDS, GenerationConfig
from .errors import DsaError, ParameterError
from .llm_methods import FineTuned
from .results import ResultStore
from .stores import DEFAULT_STORE_ROOT, store_dir, store_key
from .surveys import SubgroupTable, Survey

SPLITS = ("NewQ", "NewP", "Both")
LLM_METHODS = ("Direct", "PE", "TKFT", "DSA")
REFERENCES = ("QMean", "Marginal", "TS-drop", "MNL-drop")
ALL_METHODS = LLM_METHODS + REFERENCES
#: Which reference applies to which split (the others are not defined there).
REFERENCE_SPLITS = {"QMean": ("NewQ", "Both"), "Marginal": SPLITS, "TS-drop": ("NewP",), "MNL-drop": ("NewP",)}


# --------------------------------------------------------------------------
# Splits (the configuration is dsalib.config.GenerationConfig)
# --------------------------------------------------------------------------


@dataclass
class GenerationSplit:
    """The training set and the three test sets of one dataset."""

    survey: Survey
    attributes: tuple[str, ...]
    heldout_attribute: str
    heldout_levels: tuple[str, ...]
    train_questions: tuple[str, ...]
    test_questions: tuple[str, ...]
    train_rows: np.ndarray  # respondents of the training population
    test_rows: np.ndarray  # respondents of the unseen population
    train: dict  # training question -> SubgroupTable (training population)
    truths: dict  # split -> {question -> SubgroupTable (subgroups with ≥ min_eval_size respondents)}
    min_eval_size: int = 10

    @property
    def heldout_index(self) -> int:
        return self.attributes.index(self.heldout_attribute)

    @property
    def n_options(self) -> int:
        """The option head's labels: the most options of a training question (questions may differ)."""
        return max(self.survey.question(q).n_options for q in self.train_questions)

    def test_questions_of(self, split: str) -> tuple[str, ...]:
        return tuple(self.truths[split])

    def describe(self) -> pd.DataFrame:
        """One row per (set, question): respondents and subgroups."""
        rows = [{"set": "train", "question": q, "respondents": t.n_respondents, "subgroups": t.n_subgroups}
                for q, t in self.train.items()]
        for split, tables in self.truths.items():
            rows += [{"set": split, "question": q, "respondents": t.n_respondents, "subgroups": t.n_subgroups}
                     for q, t in tables.items()]
        return pd.DataFrame(rows)

    def prompt_count(self, templates: int = 2) -> int:
        """Prompts a run needs: training prompts plus ``templates`` per evaluated test subgroup."""
        return (sum(t.n_subgroups for t in self.train.values())
                + templates * sum(t.n_subgroups for tabs in self.truths.values() for t in tabs.values()))


def make_split(survey: Survey, cfg: GenerationConfig) -> GenerationSplit:
    """Build the training set and the NewQ / NewP / Both truths; every bad input is a clear error."""
    train_qs = tuple(surveys.iter_questions(survey, cfg.train_questions))
    test_qs = tuple(surveys.iter_questions(survey, cfg.test_questions))
    attrs = survey.check_background(cfg.background)
    if cfg.heldout_attribute not in attrs:
        raise ParameterError(
            f"the held-out attribute '{cfg.heldout_attribute}' is not among the background attributes {list(attrs)}; "
            f"add it to background (dataset '{survey.name}' has {', '.join(survey.background)})")
    if len(attrs) < 2:
        raise ParameterError("the background needs at least two attributes: the held-out one and one more")
    names = survey.background[cfg.heldout_attribute].level_names
    bad = [lv for lv in list(cfg.heldout_levels) + list(cfg.excluded_levels) if lv not in names]
    if bad:
        raise ParameterError(f"background '{cfg.heldout_attribute}' of '{survey.name}' ({survey.source_name}) has "
                             f"no level(s) {bad}; its levels: {list(names)}")
    if len(set(cfg.heldout_levels) | set(cfg.excluded_levels)) >= len(names):
        raise ParameterError(f"heldout_levels and excluded_levels leave no level of '{cfg.heldout_attribute}' "
                             "for the training population")
    ks = {q: survey.question(q).n_options for q in train_qs + test_qs}
    k_train = max(ks[q] for q in train_qs)
    wide = {q: ks[q] for q in test_qs if ks[q] > k_train}
    if wide:
        raise ParameterError(f"test question(s) {wide} have more options than any training question (at most "
                             f"{k_train}); the option head has the training questions' labels: add a training "
                             "question with as many options")
    held = np.array([names.index(lv) for lv in cfg.heldout_levels])
    excluded = np.array([names.index(lv) for lv in cfg.excluded_levels], dtype=np.int64)
    level = survey.frame[cfg.heldout_attribute].to_numpy()
    test_rows = np.flatnonzero(np.isin(level, held))
    train_rows = np.flatnonzero((level >= 0) & ~np.isin(level, held) & ~np.isin(level, excluded))
    train = {q: surveys.subgroup_table(survey, q, attrs, train_rows) for q in train_qs}
    for q, t in train.items():
        if t.n_subgroups < cfg.min_train_subgroups:
            raise ParameterError(
                f"training question '{q}' has {t.n_subgroups} subgroup(s) in the training population, fewer than "
                f"min_train_subgroups = {cfg.min_train_subgroups}; use more background attributes or another question")

    def truth(q, rows, split):
        t = surveys.subgroup_table(survey, q, attrs, rows)
        t = t.subset(t.n >= cfg.min_eval_size)
        if t.n_subgroups == 0:
            raise ParameterError(
                f"{split}: question '{q}' has no subgroup with ≥ {cfg.min_eval_size} respondents in its test "
                "population; lower min_eval_size, hold out a larger population or use fewer background attributes")
        t.meta.update(split=split)
        return t

    truths = {
        "NewQ": {q: truth(q, train_rows, "NewQ") for q in test_qs},
        "NewP": {q: truth(q, test_rows, "NewP") for q in train_qs},
        "Both": {q: truth(q, test_rows, "Both") for q in test_qs},
    }
    return GenerationSplit(survey, attrs, cfg.heldout_attribute, tuple(cfg.heldout_levels), train_qs, test_qs,
                           train_rows, test_rows, train, truths, cfg.min_eval_size)


# --------------------------------------------------------------------------
# Stacked multi-question tables and fine-tuning
# --------------------------------------------------------------------------


def stack_tables(tables: Sequence[SubgroupTable], name: str | None = None) -> SubgroupTable:
    """One table of several questions' subgroup tables (same attributes and levels; any numbers of options).

    Key column 0 is the question's position in ``tables``; column ``j + 1``
    is attribute ``j``'s level offset by the question (``q * L_j + level``),
    so two rows of different questions are never at Hamming distance 1
    (Phase 2 pairs and operators stay within a question).  Questions with
    fewer options than the largest have their counts padded with zeros; the
    stacked table has the largest question's option labels, and
    ``meta["options_per_question"]`` says how many options each question has
    (a model trained on it normalises each row over its own question's
    options, :meth:`dsalib.engine.OptionModel.prepare`).
    """
    tables = list(tables)
    if not tables:
        raise DsaError("stack_tables needs at least one table")
    first = tables[0]
    for t in tables[1:]:
        if t.attributes != first.attributes or t.levels != first.levels:
            raise DsaError(f"question '{t.question}' has other attributes or levels than '{first.question}'; "
                           "stacked questions must share them")
        if t.dataset != first.dataset:
            raise DsaError("stacked tables must come from one dataset")
    widest = max(tables, key=lambda t: t.n_options)
    k_max = widest.n_options
    n_lv = np.array([len(lv) for lv in first.levels])
    keys, counts, n = [], [], []
    for q, t in enumerate(tables):
        keys.append(np.column_stack([np.full(len(t.keys), q), t.keys + q * n_lv]).astype(np.int64))
        counts.append(np.pad(t.counts, ((0, 0), (0, k_max - t.n_options))))
        n.append(t.n)
    qnames = tuple(t.question for t in tables)
    levels = (qnames,) + tuple(tuple(f"{qn}:{lv}" for qn in qnames for lv in levs) for levs in first.levels)
    return SubgroupTable(dataset=first.dataset, question=name or "+".join(qnames),
                         attributes=("question",) + tuple(first.attributes), levels=levels,
                         keys=np.concatenate(keys), counts=np.concatenate(counts).astype(float),
                         n=np.concatenate(n), option_labels=widest.option_labels, weighted=False,
                         meta={"stacked_questions": list(qnames), "source": first.meta.get("source"),
                               "options_per_question": [int(t.n_options) for t in tables]})


def unstack_keys(keys: np.ndarray, n_levels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(question positions, original level keys) of stacked keys."""
    keys = np.asarray(keys, dtype=np.int64)
    q = keys[:, 0]
    return q, keys[:, 1:] - q[:, None] * np.asarray(n_levels)[None, :]


@dataclass
class MultiQuestionFineTuned(FineTuned):
    """TKFT / DSA trained once on several questions (see the module docstring).

    ``fit_questions(tables)`` stacks the training tables and runs
    :meth:`FineTuned.fit` on them (epoch selection on held-out training
    respondents, Phase 2 guard, memoised Phase 1 shared by TKFT and DSA);
    ``predict_question(question, keys)`` predicts any question with the same
    number of options, seen or not, for any subgroup keys.
    """

    questions: tuple = ()
    attributes: tuple = ()
    _n_levels: tuple = ()
    _options: tuple = ()  # options of each trained question

    def fit_questions(self, tables: dict | Sequence[SubgroupTable]) -> "MultiQuestionFineTuned":
        tables = list(tables.values()) if isinstance(tables, dict) else list(tables)
        stacked = stack_tables(tables)
        self.questions = tuple(t.question for t in tables)
        self.attributes = tuple(tables[0].attributes)
        self._n_levels = tuple(len(lv) for lv in tables[0].levels)
        self._options = tuple(t.n_options for t in tables)
        return self.fit(stacked)

    def _row_options(self, keys) -> list[int] | None:
        if not self.questions:
            return None
        q, _ = unstack_keys(keys, self._n_levels)
        return [self._options[i] for i in q.tolist()]

    def _prompts(self, keys) -> list[str]:
        if not self.questions:  # a plain single-question table
            return super()._prompts(keys)
        q, base = unstack_keys(keys, self._n_levels)
        return self.lm.format_prompts([
            prompts.build_prompt(self.survey, self.questions[i], k, self.attributes, template=self.template,
                                 labels=self.lm.labels, answer_suffix=self.lm.answer_suffix)
            for i, k in zip(q.tolist(), base.tolist())])

    def predict_question(self, question: str, keys) -> np.ndarray:
        """Option distributions of ``question`` for subgroup ``keys`` (level indices of :attr:`attributes`)."""
        self._require_fit()
        cq = self.survey.question(question)
        if cq.n_options > self.train.n_options:
            raise DsaError(f"question '{question}' has {cq.n_options} options; the model was trained on questions "
                           f"with at most {self.train.n_options}: train it with a question that has as many")
        keys = np.asarray(keys, dtype=np.int64).reshape(-1, len(self.attributes))
        p = self._predict_prompts(self.lm.build_prompts(self.survey, question, keys, self.attributes, self.template),
                                  n_options=[cq.n_options] * len(keys))
        return p[:, :cq.n_options]


def fine_tuned(name: str, lm, survey: Survey, cfg: GenerationConfig, seed: int) -> MultiQuestionFineTuned:
    p1 = replace(cfg.phase1, seed=int(seed))
    p2 = replace(cfg.phase2, seed=int(seed))
    return MultiQuestionFineTuned(lm=lm, survey=survey, template=cfg.template, name=name, phase2=(name == "DSA"),
                                  strategy=cfg.strategy, phase1_config=p1, phase2_config=p2)


def zero_shot(lm, survey: Survey, question: str, keys, attributes, template: str) -> np.ndarray:
    """Direct (``default``) / PE (``persona``): the pretrained model's option distribution."""
    ps = lm.build_prompts(survey, question, keys, attributes, template)
    return lm.zero_shot_probs(ps, survey.question(question).n_options)


# --------------------------------------------------------------------------
# Non-LLM references
# --------------------------------------------------------------------------


def drop_attribute(table: SubgroupTable, attribute: str) -> SubgroupTable:
    """The table with ``attribute`` removed (subgroups that differ only in it are merged)."""
    if attribute not in table.attributes:
        raise DsaError(f"table has no attribute '{attribute}' (it has {list(table.attributes)})")
    j = table.attributes.index(attribute)
    if len(table.attributes) < 2:
        raise DsaError("cannot drop the only attribute of a table")
    rest = np.delete(table.keys, j, axis=1)
    keys, inv = np.unique(rest, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    counts = np.zeros((len(keys), table.n_options))
    np.add.at(counts, inv, table.counts)
    n = np.bincount(inv, weights=table.n, minlength=len(keys)).astype(np.int64)
    return replace(table, attributes=tuple(a for a in table.attributes if a != attribute),
                   levels=tuple(lv for i, lv in enumerate(table.levels) if i != j), keys=keys, counts=counts, n=n,
                   meta={**table.meta, "dropped": attribute})


def _ts(table: SubgroupTable, keys: np.ndarray) -> np.ndarray:
    return baselines.TrainingSample().fit(table).predict(keys)


def question_mean(train: dict, keys: np.ndarray, attributes: Sequence[str], drop: str | None = None) -> np.ndarray:
    """QMean: the mean over training questions of the subgroup's training distribution.

    ``drop``: an attribute removed before matching (Both: the held-out one).
    A subgroup absent from a question's table gets that question's marginal.
    """
    keys = np.asarray(keys, dtype=np.int64)
    preds = []
    for t in train.values():
        if drop is not None:
            j = list(attributes).index(drop)
            preds.append(_ts(drop_attribute(t, drop), np.delete(keys, j, axis=1)))
        else:
            preds.append(_ts(t, keys))
    return np.mean(preds, axis=0)


def marginal_mean(train: dict, n_rows: int) -> np.ndarray:
    """Marginal (NewQ/Both): the training population's answer distribution averaged over training questions."""
    m = np.mean([t.marginal for t in train.values()], axis=0)
    return np.tile(m, (n_rows, 1))


def reference_predict(name: str, split: GenerationSplit, which: str, question: str, keys: np.ndarray,
                      seed: int = 0) -> np.ndarray:
    """Prediction of a non-LLM reference ``name`` on test split ``which``."""
    if which not in REFERENCE_SPLITS.get(name, ()):
        raise DsaError(f"reference {name} is not defined on {which} (it applies to {REFERENCE_SPLITS.get(name)})")
    keys = np.asarray(keys, dtype=np.int64)
    if name in ("QMean", "Marginal") and which != "NewP":  # averages over training questions with as many options
        k = split.survey.question(question).n_options
        same = {q: t for q, t in split.train.items() if t.n_options == k}
        if not same:
            raise DsaError(f"reference {name} averages training questions with {k} options like '{question}'; "
                           "there are none")
        if name == "QMean":
            return question_mean(same, keys, split.attributes, drop=split.heldout_attribute if which == "Both" else None)
        return marginal_mean(same, len(keys))
    if name == "Marginal":
        return np.tile(split.train[question].marginal, (len(keys), 1))
    j = split.heldout_index
    table = drop_attribute(split.train[question], split.heldout_attribute)
    rest = np.delete(keys, j, axis=1)
    if name == "TS-drop":
        return _ts(table, rest)
    from .statistical import MainEffectsLogit

    return MainEffectsLogit(seed=seed).fit(table).predict(rest)


# --------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------

#: GenerationConfig fields that do not change a stored result (they select which keys run, or where things go).
_NOT_IN_STORE = ("seeds", "methods", "data_dir", "source", "prefix_cache", "store_root", "output_dir",
                 *MODEL_PLACEMENT_FIELDS)


def store_settings(cfg: GenerationConfig, survey: Survey) -> dict:
    """The resolved settings a stored Generation result depends on (defaults filled in, background resolved)."""
    conf = {k: v for k, v in cfg.to_params().items() if k not in _NOT_IN_STORE}
    conf["background"] = list(survey.check_background(cfg.background))
    return conf


def store_dir_for(cfg: GenerationConfig, root: str | Path = DEFAULT_STORE_ROOT, survey: Survey | None = None) -> Path:
    """The resumable store of a configuration: ``root/generation-<dataset>-<hash>`` (see :mod:`dsalib.stores`)."""
    survey = survey if survey is not None else surveys.load_survey(cfg.dataset, data_dir=cfg.data_dir,
                                                                   source=cfg.source)
    return store_dir(root, ["generation", survey.name], store_key("generation", store_settings(cfg, survey), survey))


def _key(split: str, question: str, seed: int, method: str) -> dict:
    return {"study": "generation", "split": split, "question": question, "seed": int(seed), "method": method}


def methods_for(split_name: str, methods: Sequence[str]) -> list[str]:
    """The methods evaluated on a split (references only where they are defined)."""
    return [m for m in methods if m in LLM_METHODS or split_name in REFERENCE_SPLITS[m]]


def run_generation(cfg: GenerationConfig, lm=None, store_root: str | Path = DEFAULT_STORE_ROOT,
                   progress=print, split: GenerationSplit | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run (or resume) the Generation study; returns (summary rows, per-subgroup rows).

    For each seed the fine-tuned methods are trained once on the whole
    training set and predict every split (:func:`dsalib.experiments.fit_and_score`,
    one truth per (split, question)); results are stored per
    (split, question, seed, method) in :func:`store_dir_for`, so an
    interrupted run resumes.  Method ``floor`` is the noise floor.
    """
    from .experiments import Fitted, Truth, fit_and_score, with_distributions

    if not isinstance(cfg, GenerationConfig):
        raise ParameterError(f"run_generation needs a GenerationConfig, got {type(cfg).__name__}")
    if split is None:
        survey = surveys.load_survey(cfg.dataset, data_dir=cfg.data_dir, source=cfg.source)
        split = make_split(survey, cfg)
    survey = split.survey
    if lm is not None:
        lm.chat_template = cfg.chat_template  # a loaded model reads the prompts the way this configuration says
    key = store_key("generation", store_settings(cfg, survey), survey)
    store = ResultStore(store_dir(store_root, ["generation", survey.name], key), config=key)
    pop = {"NewQ": "training", "NewP": "unseen", "Both": "unseen"}
    names = survey.background[split.heldout_attribute].level_names

    def population(per, table):
        per = per.copy()
        per.insert(2, "population", [names[k] for k in table.keys[:, split.heldout_index]])
        return with_distributions(per, table.dist, "truth")

    for seed in cfg.seeds:
        seed = int(seed)
        context = {"dataset": cfg.dataset, "source": survey.source_name, "heldout_attribute": split.heldout_attribute,
                   "heldout_levels": ",".join(split.heldout_levels), "template": cfg.template,
                   "train_questions": ",".join(split.train_questions),
                   "train_respondents": int(len(split.train_rows))}
        truths = []
        for s in SPLITS:
            for q, table in split.truths[s].items():
                truths.append(Truth(store, lambda name, s=s, q=q: _key(s, q, seed, name), table,
                                    {**context, "population": pop[s], "truth_respondents": int(table.n_respondents)},
                                    f"{s} {q} seed={seed}", columns=lambda per, table=table: population(per, table),
                                    applies=lambda name, s=s: name in methods_for(s, cfg.methods)))

        def fit(name, fitted, seed=seed):
            if name in LLM_METHODS and lm is None:
                raise ParameterError(f"method {name} needs a language model (lm=...)")
            extra = {"model": cfg.model} if name in LLM_METHODS else {}
            if name in ("Direct", "PE"):
                template = "persona" if name == "PE" else cfg.template
                return Fitted(lambda t: zero_shot(lm, survey, t.table.question, t.table.keys, split.attributes,
                                                  template), extra)
            if name in ("TKFT", "DSA"):
                ft = fine_tuned(name, lm, survey, cfg, seed).fit_questions(split.train)
                rep = ft.report
                extra.update(phase1_epochs=int(rep["phase1"]["epochs"]), phase2_outcome=(rep.get("phase2") or {}).get("outcome"),
                             phase2_pairs=(rep.get("phase2") or {}).get("pairs"), train_prompts=int(ft.train.n_subgroups))
                return Fitted(lambda t: ft.predict_question(t.table.question, t.table.keys), extra, ft)
            return Fitted(lambda t: reference_predict(name, split, t.table.meta["split"], t.table.question,
                                                      t.table.keys, seed), extra)

        fit_and_score(cfg.methods, truths, fit, seed, cfg.min_eval_size, progress)
    res = store.load_all()
    per = store.load_all_per_subgroup()
    keep = lambda df: df[df.seed.isin([int(s) for s in cfg.seeds]) & df.method.isin(list(cfg.methods) + ["floor"])
                         & df.apply(lambda r: r.question in split.truths.get(r.split, {}), axis=1)]
    return keep(res).reset_index(drop=True), keep(per).reset_index(drop=True)


def summary_table(res: pd.DataFrame, metric_cols: Sequence[str] = ("wd_scaled_mean", "jsd_mean")) -> pd.DataFrame:
    """The paper's Table 2 layout: one row per method, (metric, split) columns plus the mean over splits.

    Each cell is the mean over test questions and seeds of the per-question
    mean error over subgroups; ``Avg`` is the mean of the splits a method has.
    """
    order = [m for m in ALL_METHODS + ("floor",) if m in set(res.method)]
    t = res.groupby(["method", "split"])[list(metric_cols)].mean().unstack("split")
    cols = []
    for mcol in metric_cols:
        for s in SPLITS:
            if (mcol, s) in t.columns:
                cols.append((mcol, s))
    t = t[cols]
    for mcol in metric_cols:
        t[(mcol, "Avg")] = t[mcol].mean(axis=1, skipna=False)
    t = t[[c for mcol in metric_cols for c in t.columns if c[0] == mcol]]
    return t.loc[order]
