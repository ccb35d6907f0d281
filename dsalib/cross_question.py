"""A cross-question prior: a model fine-tuned on the survey's *other* questions, for a target question with a small sample.

An embedded language model knows little about a survey's population, but a
survey asks many questions of the same respondents.  A model fine-tuned on
the other core questions (all their respondents) has learnt how the
background shifts answers in this population; for the target question,
whose training sample is small, that is information beyond the sample.
Three methods use it (registered in :mod:`dsalib.methods`):

- ``XQ``: the other questions' model read on the target question's prompts
  (zero-shot transfer to an unseen question, like Generation's NewQ);
- ``EB-XQ``: empirical-Bayes shrinkage of the target's training sample toward
  ``XQ`` (:class:`dsalib.shrinkage.EBShrinkage`);
- ``XQ-TKFT``: TKFT on the target's sample that starts from the other
  questions' weights instead of the pretrained ones (a warm start; epochs are
  chosen on validation data as for TKFT, so 0 epochs, i.e. ``XQ``, can win).

The non-LLM control is ``Stacked-MNL`` (:class:`dsalib.statistical.StackedLogit`):
a multinomial logit on the same other questions with background effects
shared across questions and question-specific intercepts.

**The other questions' model** (:func:`other_questions_model`) is multi-question
TKFT (:class:`dsalib.generation.MultiQuestionFineTuned`): Phase 1 on the
stacked tables of every other core question of the survey (all eligible
respondents, tabulated on the target's background attributes), epochs chosen
on held-out respondents, questions with different numbers of options in one
model (each normalised over its own options).  It does not depend on the
target's training sample, so it is trained once per target question, with
seed 0, and kept on the language model handle for every training size and
seed (:attr:`LanguageModel.cross_question_models`).  The target question's
answers are never used by it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from . import surveys
from .errors import DsaError
from .llm_methods import FineTuned, _PromptedMethod
from .surveys import SubgroupTable


def other_questions(survey: surveys.Survey, question: str) -> list[str]:
    """The survey's core questions other than ``question`` (in the spec's order)."""
    others = [q for q in survey.core if q != question]
    if not others:
        raise DsaError(f"dataset '{survey.name}' has no core question besides '{question}'; a cross-question prior "
                       "needs other questions")
    return others


def other_questions_model(lm, survey: surveys.Survey, question: str, attributes, phase1, strategy: str = "last_layer",
                          template: str = "default"):
    """Multi-question TKFT on every other core question (all respondents); memoised on ``lm`` (see the module
    docstring).  ``phase1``: its :class:`dsalib.train.Phase1Config` (its seed is set to 0)."""
    from .generation import MultiQuestionFineTuned

    attrs = tuple(attributes)
    p1 = replace(phase1, seed=0)
    key = (survey.name, question, attrs, strategy, template, repr(sorted(vars(p1).items())),
           surveys_fingerprint(survey))
    memo = lm.cross_question_models
    if key not in memo:
        tables = [surveys.subgroup_table(survey, q, attrs) for q in other_questions(survey, question)]
        model = MultiQuestionFineTuned(lm=lm, survey=survey, template=template, name="XQ", strategy=strategy,
                                       phase1_config=p1)
        memo[key] = model.fit_questions(tables)
    return memo[key]


def surveys_fingerprint(survey: surveys.Survey) -> tuple:
    """What the other questions' model depends on in the survey: its size and its questions."""
    return (survey.n_respondents, tuple(survey.core), tuple(survey.background))


@dataclass
class CrossQuestion(_PromptedMethod):
    """``XQ``: the other questions' model (:func:`other_questions_model`) on the target question's prompts."""

    name: str = "XQ"
    phase1_config: object = None
    strategy: str = "last_layer"
    model: object = field(default=None, repr=False)
    report: dict = field(default_factory=dict)

    def fit(self, train: SubgroupTable, **context) -> "CrossQuestion":
        from .train import Phase1Config

        self._fit_common(train)
        self.model = other_questions_model(self.lm, self.survey, train.question, train.attributes,
                                           self.phase1_config or Phase1Config(), self.strategy, self.template)
        self.report = {"questions": list(self.model.questions), "phase1": self.model.report.get("phase1"),
                       "selection": self.model.report.get("selection")}
        return self

    def predict(self, keys) -> np.ndarray:
        self._require_fit()
        from .baselines import _check_keys

        keys = _check_keys(self.train, keys)
        return self.model.predict_question(self.train.question, keys)


def warm_started_tkft(lm, survey, phase1, phase2=None, strategy: str = "last_layer", template: str = "default"):
    """``XQ-TKFT``: a TKFT whose Phase 1 starts from the other questions' model (set at ``fit``)."""
    return _WarmTKFT(lm=lm, survey=survey, template=template, name="XQ-TKFT", phase2=False, strategy=strategy,
                     phase1_config=phase1, phase2_config=phase2)


@dataclass
class _WarmTKFT(FineTuned):
    def fit(self, train: SubgroupTable, **context) -> "_WarmTKFT":
        xq = other_questions_model(self.lm, self.survey, train.question, train.attributes, self.phase1_config,
                                   self.strategy, self.template)
        if xq.train.n_options != train.n_options:
            raise DsaError(f"XQ-TKFT starts from the other questions' model, whose option head has "
                           f"{xq.train.n_options} labels; '{train.question}' has {train.n_options} options. Use XQ "
                           "or EB-XQ, which read any question with at most as many options")
        self.init_state = xq._state
        super().fit(train, **context)
        self.report["warm_start"] = {"questions": list(xq.questions), "phase1_epochs": xq.report["phase1"]["epochs"]}
        return self


# --------------------------------------------------------------------------
# The study's tables (notebooks/cross_question.ipynb)
# --------------------------------------------------------------------------

#: The cross-question LLM methods and the controls they are judged against.
LLM_METHODS = ("XQ", "EB-XQ", "XQ-TKFT")
CONTROLS = ("EB-MNL", "Stacked-MNL")


def by_size(res):
    """Mean JSD per truth mode, training size and method: mean over questions per seed, then ± s.d. over seeds."""
    from .report import seed_summary

    return seed_summary(res[res.method != "floor"], "jsd_mean", by=["truth_mode", "n", "method"])


def verdicts(res):
    """Per truth mode and training size: the best cross-question LLM method against each control (JSD).

    Columns: ``best_xq`` (the lowest of :data:`LLM_METHODS`), its JSD, the
    controls' JSDs, and ``beats_<control>`` (its JSD below the control's).
    """
    import pandas as pd

    s = by_size(res).set_index(["truth_mode", "n", "method"]).jsd_mean
    rows = []
    for (mode, n), block in s.groupby(level=["truth_mode", "n"]):
        block = block.droplevel(["truth_mode", "n"])
        ours = block.reindex(LLM_METHODS).dropna()
        if ours.empty:
            continue
        best = ours.idxmin()
        row = {"truth_mode": mode, "n": int(n), "best_xq": best, "best_xq_jsd": float(ours[best])}
        for c in CONTROLS:
            if c in block:
                row[f"{c}_jsd"] = float(block[c])
                row[f"beats_{c}"] = bool(ours[best] < block[c])
        rows.append(row)
    return pd.DataFrame(rows)
