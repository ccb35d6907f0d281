"""Every method by name: the registry that parameter files and notebooks use.

``make_method(name, lm=..., survey=..., **options)`` returns an unfitted
method with the common interface (``fit(train)``, ``predict(keys)``).

| name | what it is | needs a model |
|---|---|---|
| ``TS`` | the training sample's subgroup distribution | no |
| ``MNL`` | main-effects multinomial logit, L2 by 5-fold CV | no |
| ``POLR`` | proportional-odds ordinal logit | no |
| ``EB-MNL`` | empirical-Bayes shrinkage toward MNL | no |
| ``Stacked-MNL`` | MNL fitted with the survey's other questions, main effects partly shared | no (needs the survey) |
| ``Direct`` | zero-shot, default prompt | yes |
| ``PE`` | zero-shot, persona prompt | yes |
| ``AAE`` | logit adapter on the LLM's output and the background | yes |
| ``TKFT`` | Phase 1 fine-tuning | yes |
| ``DSA`` | Phase 1 + Phase 2 fine-tuning | yes |
| ``EB-TKFT``, ``EB-DSA`` | EB shrinkage toward the fine-tuned model (LLM-informed shrinkage) | yes |
| ``XQ`` | the model fine-tuned on the survey's other questions, read on the target (cross-question prior) | yes |
| ``EB-XQ`` | EB shrinkage toward ``XQ`` | yes |
| ``XQ-TKFT`` | TKFT warm-started from ``XQ``'s weights | yes |

``EB-<X>`` given ``prior=`` (a method ``X`` already fitted on the same
training table) shrinks toward it without refitting it; the concentration
estimator is :data:`EB_CONCENTRATION` unless ``concentration=`` says otherwise
(see :mod:`dsalib.shrinkage`).
"""

from __future__ import annotations

from .baselines import TrainingSample
from .errors import ParameterError

STATISTICAL = ("TS", "MNL", "POLR", "EB-MNL")
LLM = ("Direct", "PE", "AAE", "TKFT", "DSA", "EB-TKFT", "EB-DSA", "XQ", "EB-XQ", "XQ-TKFT")
#: Statistical methods that also learn from the survey's other questions (the non-LLM cross-question control).
CROSS_QUESTION = ("Stacked-MNL",)
ALL = STATISTICAL + CROSS_QUESTION + LLM
#: The registry's estimator of the EB concentration (``"marginal"`` or ``"crossfit"``, :mod:`dsalib.shrinkage`);
#: the cross-fit was not better against held-out truth (README, "Empirical-Bayes shrinkage").
EB_CONCENTRATION = "marginal"


def needs_model(name: str) -> bool:
    return name in LLM


#: Methods that read the language model but never train it (zero-shot prompting; AAE fits a head on embeddings).
KEEPS_MODEL_FROZEN = ("Direct", "PE", "AAE")


def trains_model(name: str) -> bool:
    """Whether method ``name`` fine-tunes the language model (with the configuration's ``strategy``)."""
    return needs_model(name) and name not in KEEPS_MODEL_FROZEN


def prompt_reads(name: str, template: str = "default", strategy: str = "last_layer") -> tuple[str, bool] | None:
    """What method ``name`` reads through the cached ``last_layer`` engine's frozen-prefix cache, for its own
    question: ``(template, reads_training_subgroups)``, or None when it reads nothing from that cache.

    Every method reads the truths' subgroups.  The zero-shot methods (Direct, PE) read nothing else; AAE and
    the fine-tuned methods also read the training subgroups (to fit; EB-X's prior X predicts them to choose
    α).  XQ trains on the other questions and only predicts this one.  The fine-tuned methods read the cache
    only with the ``last_layer`` strategy; the zero-shot methods and AAE always do."""
    if not needs_model(name):
        return None
    tpl = "persona" if name == "PE" else template
    if name in KEEPS_MODEL_FROZEN:
        return tpl, name == "AAE"
    if strategy != "last_layer":
        return None
    return tpl, name != "XQ"


#: Methods that learn from the survey's other core questions too (the survey is loaded with all its questions).
OTHER_QUESTIONS = ("Stacked-MNL", "XQ", "EB-XQ", "XQ-TKFT")


def uses_other_questions(names) -> bool:
    """Whether any of the methods ``names`` learns from the survey's other questions."""
    return any(n in OTHER_QUESTIONS for n in names)


def make_method(name: str, lm=None, survey=None, prior=None, phase1=None, phase2=None,
                strategy: str = "last_layer", seed: int = 0, template: str = "default",
                concentration: str | None = None):
    """Build the method called ``name`` (see the module docstring).

    ``phase1`` / ``phase2``: :class:`dsalib.train.Phase1Config` /
    :class:`~dsalib.train.Phase2Config` (or dicts of their fields) for the
    fine-tuned methods.  ``prior``: for ``EB-TKFT``/``EB-DSA``, an already
    fitted TKFT/DSA method to shrink toward, for ``EB-MNL`` a fitted MNL (it
    is then not refitted); without it the prior is fitted inside.
    ``concentration``: the EB methods' estimator of α (default
    :data:`EB_CONCENTRATION`); the cross-fit's folds use ``seed``.
    ``template``: the prompt template of Direct, AAE, TKFT and DSA
    (:data:`dsalib.prompts.TEMPLATES`; PE always uses ``persona``).
    """
    from . import llm_methods as L
    from .shrinkage import EBShrinkage
    from .statistical import MainEffectsLogit, OrdinalLogit, StackedLogit
    from .train import Phase1Config, Phase2Config

    if name not in ALL:
        raise ParameterError(f"unknown method {name!r}; choose from {', '.join(ALL)}")
    from .shrinkage import CONCENTRATIONS

    eb = {"concentration": concentration or EB_CONCENTRATION, "seed": seed}
    if eb["concentration"] not in CONCENTRATIONS:
        raise ParameterError(f"concentration must be one of {CONCENTRATIONS}, got {concentration!r}")
    base = name.removeprefix("EB-")
    if name.startswith("EB-") and prior is not None:
        if getattr(prior, "name", None) != base:
            raise ParameterError(f"{name} needs a fitted {base} method as its prior, "
                                 f"got {getattr(prior, 'name', prior)!r}")
        return EBShrinkage(prior=prior, prior_fitted=True, name=name, **eb)
    if name == "TS":
        return TrainingSample()
    if name == "MNL":
        return MainEffectsLogit(seed=seed)
    if name == "POLR":
        return OrdinalLogit()
    if name == "EB-MNL":
        return EBShrinkage(prior=MainEffectsLogit(seed=seed), **eb)
    if name == "Stacked-MNL":
        if survey is None:
            raise ParameterError("method 'Stacked-MNL' fits the survey's other questions too: give survey=...")
        return StackedLogit(survey=survey, seed=seed)
    if lm is None or survey is None:
        raise ParameterError(f"method {name!r} needs a language model and the survey (lm=..., survey=...)")
    if name == "Direct":
        return L.Direct(lm, survey, template=template)
    if name == "PE":
        return L.persona(lm, survey)
    if name == "AAE":
        return L.AAE(lm, survey, template=template, seed=seed)
    p1 = phase1 if isinstance(phase1, Phase1Config) else Phase1Config(**{"seed": seed, **(phase1 or {})})
    p2 = phase2 if isinstance(phase2, Phase2Config) else Phase2Config(**{"seed": seed, **(phase2 or {})})
    if base in ("XQ", "XQ-TKFT"):
        from . import cross_question as X

        if name == "XQ-TKFT":
            return X.warm_started_tkft(lm, survey, p1, p2, strategy=strategy, template=template)
        xq = X.CrossQuestion(lm=lm, survey=survey, template=template, phase1_config=p1, strategy=strategy)
        return EBShrinkage(prior=xq, name=name, **eb) if name.startswith("EB-") else xq
    ft = L.FineTuned(lm=lm, survey=survey, template=template, name=base, phase2=(base == "DSA"), strategy=strategy,
                     phase1_config=p1, phase2_config=p2)
    return EBShrinkage(prior=ft, name=name, **eb) if name.startswith("EB-") else ft
