"""A known-truth check of DSA's Phase 2: surveys drawn from Theorem 1's factorised model.

The true subgroup distributions of a real survey are unknown; here they are
known exactly.  :func:`synthetic_survey` turns a table ``P(C | b)`` from
:func:`dsalib.theorem.random_factorised` (``P(C | b) ∝ Π_k φ_k(C, b_k)``, plus
an optional interaction between attributes 0 and 1) into a :class:`Survey`
with readable wordings (so the language-model methods can build prompts) and
respondents drawn from the table: subgroup sizes follow unequal population
shares of the attribute levels (as in real surveys, where Phase 2 maps the
larger subgroup of a pair onto the smaller), with ``per_subgroup`` respondents
per subgroup on average.

:func:`run_case` fits TS, the main-effects logit (MNL, the correct model
family when the interaction is 0), TKFT and DSA on one such sample and scores
every method against the exact truth.  It also measures where Phase 2 can
gain, apart from the gradient path:

``resolution``
    How much a method's subgroup predictions differ: the mean JSD of each
    subgroup's prediction to the size-weighted mean prediction.  Phase 2's
    operators come from Phase 1's predictions; a Phase 1 that hardly tells
    subgroups apart gives near-identity operators.
``ideal-P2(X)``
    The distributions Phase 2 would reach if it fitted its targets exactly:
    with X's predictions as Phase 1, every subgroup that is the smaller of at
    least one training pair gets the minimiser of the summed Phase 2 loss
    ``Σ_i KL(p || target_i)`` over its pairs (the normalised geometric mean of
    its targets); the other subgroups keep X's prediction.  ``ideal-P2(TS)``
    is Phase 2 on top of a Phase 1 that fits the training sample exactly.
``target_jsd`` / ``phase1_jsd``
    Over the training pairs: JSD from the Phase 2 target to the smaller
    subgroup's truth, and from its Phase 1 prediction to the truth.  The
    target is what Phase 2 pulls toward; it helps only where it is closer.
``moved_to_target``
    The share of the distance (KL from prediction to target, summed over
    pairs) that DSA's Phase 2 closed relative to TKFT.

Everything is seeded; the language model is the only slow part.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from numbers import Integral, Real

import numpy as np
import pandas as pd

from . import metrics, quantile, surveys, theorem
from .errors import DsaError, ParameterError
from .surveys import SubgroupTable, Survey, hamming1_pairs

#: Background questions of the synthetic survey (attribute name, wording, answers); the first m are used.
ATTRIBUTES = (
    ("gender", "What is your gender?", ("Male", "Female", "Other", "Prefer not to say")),
    ("age", "How old are you?", ("18 to 34 years old", "35 to 54 years old", "55 to 69 years old",
                                 "70 years old or older")),
    ("area", "Which best describes the area where you live?", ("A big city", "The suburbs of a big city",
                                                                "A town or small city", "A country village")),
    ("education", "What is the highest level of education you have completed?",
     ("Primary school", "Secondary school", "Vocational training", "University degree")),
)
#: The core question and its options for each number of options.
QUESTION = ("The government should take measures to reduce differences in income levels. "
            "How much do you agree or disagree?")
OPTIONS = {
    2: ("Agree", "Disagree"),
    3: ("Agree", "Neither agree nor disagree", "Disagree"),
    4: ("Agree strongly", "Agree", "Disagree", "Disagree strongly"),
    5: ("Agree strongly", "Agree", "Neither agree nor disagree", "Disagree", "Disagree strongly"),
}
#: Methods :func:`run_case` can score.
METHODS = ("TS", "MNL", "TKFT", "DSA", "ideal-P2(TS)", "ideal-P2(TKFT)")


@dataclass(frozen=True)
class KnownTruthSample:
    """A synthetic survey sample and the exact truth of its subgroups.

    ``truth``: (G, K) true distributions in the order of ``table.keys`` (all
    subgroups of the grid); ``train``: the sample's subgroup table (subgroups
    with at least one respondent); ``survey``: the :class:`Survey` it came from.
    """

    table: theorem.FactorisedTable
    survey: Survey
    train: SubgroupTable
    truth: np.ndarray
    question: str = "redist"

    def truth_of(self, keys: np.ndarray) -> np.ndarray:
        """The true distributions of subgroups ``keys``."""
        idx = np.ravel_multi_index(np.asarray(keys).T, self.table.levels)
        return self.truth[idx]


def _spec(levels: tuple[int, ...], n_options: int):
    if len(levels) > len(ATTRIBUTES):
        raise ParameterError(f"the synthetic survey has at most {len(ATTRIBUTES)} attributes, got {len(levels)}")
    if n_options not in OPTIONS:
        raise ParameterError(f"the synthetic survey has {sorted(OPTIONS)} options, got {n_options}")
    for (name, _, answers), n in zip(ATTRIBUTES, levels):
        if n > len(answers):
            raise ParameterError(f"attribute '{name}' has at most {len(answers)} levels, got {n}")
    raw = {
        "name": "known_truth",
        "title": "Synthetic survey drawn from a factorised model (dsalib.known_truth)",
        "sources": [{"kind": "file", "files": ["<synthetic>"],
                     "description": "synthetic: drawn by dsalib.known_truth.synthetic_survey"}],
        "core": {"redist": {"wording": QUESTION, "options": dict(enumerate(OPTIONS[n_options]))}},
        "background": {
            name: {"variable": name, "wording": wording,
                   "levels": [{"name": a, "answer": a, "codes": [i]} for i, a in enumerate(answers[:n])]}
            for (name, wording, answers), n in zip(ATTRIBUTES, levels)
        },
    }
    return surveys.parse_spec(raw, "<dsalib.known_truth>")


def subgroup_sizes(levels: tuple[int, ...], per_subgroup: float, seed, imbalance: float = 1.0) -> np.ndarray:
    """Respondents per subgroup (C order of the grid), on average ``per_subgroup``.

    Each attribute's levels get population shares from a Dirichlet with
    concentration ``1 / imbalance`` (``imbalance = 0``: equal shares); a
    subgroup's share is the product, and the sample is multinomial, so sizes
    vary as in a real survey.
    """
    if not isinstance(per_subgroup, Real) or per_subgroup <= 0:
        raise ParameterError(f"per_subgroup must be a positive number, got {per_subgroup!r}")
    if not isinstance(imbalance, Real) or imbalance < 0:
        raise ParameterError(f"imbalance must be a number ≥ 0, got {imbalance!r}")
    rng = np.random.default_rng(seed if isinstance(seed, np.random.SeedSequence) else theorem._seed_sequence(seed))
    share = np.ones(())
    for n in levels:
        s = np.full(n, 1.0 / n) if imbalance == 0 else rng.dirichlet(np.full(n, 1.0 / imbalance))
        s = 0.5 * s + 0.5 / n if imbalance else s  # keep every level at ≥ half its equal share
        share = np.multiply.outer(share, s)
    total = int(round(per_subgroup * share.size))
    return rng.multinomial(total, share.reshape(-1))


def synthetic_survey(table: theorem.FactorisedTable, per_subgroup: float, seed, imbalance: float = 1.0
                     ) -> KnownTruthSample:
    """Draw respondents from ``table`` (see :func:`subgroup_sizes`) and wrap them as a :class:`Survey`."""
    spec = _spec(table.levels, table.n_options)
    ss = theorem._seed_sequence(seed)
    size_seed, answer_seed = ss.spawn(2)
    sizes = subgroup_sizes(table.levels, per_subgroup, size_seed, imbalance)
    rng = np.random.default_rng(answer_seed)
    keys = table.keys
    rows = np.repeat(np.arange(len(keys)), sizes)
    answers = np.empty(len(rows), dtype=np.int64)
    start = 0
    for g, s in enumerate(sizes):
        answers[start:start + s] = rng.choice(table.n_options, size=s, p=table.dist[g])
        start += s
    frame = pd.DataFrame({"redist": answers})
    for j, a in enumerate(spec.background):
        frame[a] = keys[rows, j]
    frame["_weight"] = 1.0
    source = spec.sources[0]
    survey = Survey(spec, source, "synthetic (dsalib.known_truth)", frame, dict(spec.core), dict(spec.background))
    train = surveys.subgroup_table(survey, "redist", tuple(spec.background))
    return KnownTruthSample(table=table, survey=survey, train=train, truth=table.dist)


# --------------------------------------------------------------------------
# Phase 2 without the gradient path
# --------------------------------------------------------------------------


def ideal_phase2(pred: np.ndarray, train: SubgroupTable, min_pair_size: int = 10, operator_min_size: int = 1,
                 n_levels: int = quantile.DEFAULT_N_LEVELS, operator_weights: str = "uniform",
                 operator: str = "quantile"):
    """Where Phase 2 would go if it fitted its targets exactly; returns ``(dist, plan)``.

    ``pred``: Phase 1 predictions of ``train``'s rows.  Targets are built as in
    :func:`dsalib.train.run_phase2` (:func:`dsalib.quantile.shift_plan`), from
    ``pred`` itself; every subgroup that is the smaller of at least one pair
    gets the normalised geometric mean of its targets (the minimiser of
    ``Σ_i KL(p || target_i)``), the others keep ``pred``.
    """
    pred = np.asarray(pred, dtype=float)
    pairs = hamming1_pairs(train, min_pair_size)
    plan = quantile.shift_plan(pred, train.keys, train.n, pairs, hamming1_pairs(train, operator_min_size),
                               levels=quantile.quantile_levels(n_levels), operator_weights=operator_weights,
                               operator=operator)
    out = pred.copy()
    if len(plan) == 0:
        return out, plan
    targets = plan.targets(pred[plan.ref])
    logt = np.log(np.clip(targets, 1e-12, None))
    for s in np.unique(plan.small):
        g = np.exp(logt[plan.small == s].mean(axis=0))
        out[s] = g / g.sum()
    return out, plan


def resolution(pred: np.ndarray, n: np.ndarray) -> float:
    """Mean JSD of each subgroup's distribution to the size-weighted mean distribution."""
    pred = np.asarray(pred, dtype=float)
    w = np.asarray(n, dtype=float)
    mean = (pred * w[:, None]).sum(axis=0) / w.sum()
    return float(metrics.jsd(pred, np.broadcast_to(mean, pred.shape)).mean())


# --------------------------------------------------------------------------
# One case: every method on one sample
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One cell of the study grid."""

    per_subgroup: float
    interaction: float
    table_seed: int
    sample_seed: int = 0


def run_case(case: Case, levels, n_options: int, effect_scale: float, imbalance: float, lm=None,
             phase1: dict | None = None, phase2: dict | None = None, methods=METHODS,
             operator_weights: str = "uniform", operator: str = "quantile") -> tuple[pd.DataFrame, dict]:
    """Fit ``methods`` on one synthetic sample; returns (per-method summary rows, diagnostics).

    Errors are against the exact truth over every subgroup of the grid
    (unweighted mean; ``_wmean`` weights by population share).  ``lm``: a
    :class:`dsalib.llm_methods.LanguageModel` (needed for TKFT, DSA and
    ``ideal-P2(TKFT)``).  ``phase1`` / ``phase2``: configuration fields.
    """
    from .methods import make_method

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ParameterError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    table = theorem.random_factorised(levels, n_options, (case.table_seed,), case.interaction, effect_scale, "ordinal")
    sample = synthetic_survey(table, case.per_subgroup, (case.table_seed, case.sample_seed, 1), imbalance)
    train = sample.train
    grid = table.keys
    truth = table.dist
    pop = np.bincount(np.ravel_multi_index(train.keys.T, table.levels), weights=train.n, minlength=len(grid))
    phase2 = dict(phase2 or {})
    p2_args = dict(min_pair_size=int(phase2.get("min_pair_size", 10)),
                   operator_min_size=int(phase2.get("operator_min_size", 1)),
                   n_levels=int(phase2.get("n_levels", quantile.DEFAULT_N_LEVELS)), operator_weights=operator_weights,
                   operator=operator)
    preds: dict = {}
    train_preds: dict = {}
    fitted: dict = {}
    seed = int(case.sample_seed)
    for name in methods:
        if name.startswith("ideal-P2"):
            continue
        if name in ("TKFT", "DSA") and lm is None:
            raise ParameterError(f"method {name} needs a language model (lm=...)")
        m = make_method(name, lm=lm, survey=sample.survey, phase1=phase1, phase2=phase2, seed=seed)
        m.fit(train)
        fitted[name] = m
        preds[name] = m.predict(grid)
        train_preds[name] = m.predict(train.keys)
    diag: dict = {"subgroups": len(grid), "train_subgroups": int(train.n_subgroups),
                  "respondents": int(train.n_respondents), "min_size": int(train.n.min()),
                  "median_size": float(np.median(train.n)),
                  "resolution_truth": resolution(truth, np.maximum(pop, 0) + 1e-12)}
    for base in ("TS", "TKFT"):
        name = f"ideal-P2({base})"
        if name not in methods:
            continue
        if base not in train_preds:
            raise ParameterError(f"{name} needs {base} among the methods")
        # Phase 1 = TS fits the sample exactly; smoothed (pseudo-count 0.5) so log ratios stay finite
        p1 = theorem.smooth(train.counts, 0.5) if base == "TS" else train_preds[base]
        ideal, plan = ideal_phase2(p1, train, **p2_args)
        full = preds[base].copy()
        moved = np.unique(plan.small)  # only the subgroups Phase 2 trains change
        full[np.ravel_multi_index(train.keys[moved].T, table.levels)] = ideal[moved]
        preds[name] = full
        if len(plan):
            small_truth = sample.truth_of(train.keys[plan.small])
            targets = plan.targets(p1[plan.ref])
            diag[f"target_jsd_{base}"] = float(metrics.jsd(targets, small_truth).mean())
            diag[f"phase1_jsd_{base}"] = float(metrics.jsd(p1[plan.small], small_truth).mean())
            # the operator kind's own bias: operators estimated from the exact truth, applied to the truth
            exact = quantile.shift_plan(sample.truth_of(train.keys), train.keys, train.n,
                                        hamming1_pairs(train, p2_args["min_pair_size"]),
                                        hamming1_pairs(train, p2_args["operator_min_size"]),
                                        levels=quantile.quantile_levels(p2_args["n_levels"]),
                                        operator_weights=operator_weights, operator=operator)
            diag["transfer_bias"] = float(metrics.jsd(exact.targets(sample.truth_of(train.keys[exact.ref])),
                                                      small_truth).mean())
            if base == "TKFT" and "DSA" in train_preds:
                kl = lambda p: float(metrics.kl(targets, np.clip(p[plan.small], 1e-12, None)).sum())  # noqa: E731
                before, after = kl(train_preds["TKFT"]), kl(train_preds["DSA"])
                diag["target_kl_tkft"], diag["target_kl_dsa"] = before, after
                diag["moved_to_target"] = float(1 - after / before) if before > 0 else float("nan")
        diag["pairs"] = len(plan)
        diag["attribute_changes"] = len(plan.changes)
    for name in ("TKFT", "DSA"):
        if name in train_preds:
            diag[f"resolution_{name}"] = resolution(train_preds[name], train.n)
    if "DSA" in fitted:
        rep = fitted["DSA"].report
        p2 = rep.get("phase2", {})
        diag.update(dsa_outcome=p2.get("outcome"), dsa_steps=int(p2.get("steps", 0) or 0),
                    dsa_pairs=int(p2.get("pairs", 0) or 0), phase1_epochs=int(rep["phase1"]["epochs"]))
        sel = rep.get("selection", {}).get("phase2")
        if sel:
            diag.update(val_ce_before=sel.get("val_ce_before"), val_ce_after=sel.get("val_ce_after"))
    rows = []
    w = pop / pop.sum()
    for name in methods:
        j = metrics.jsd(preds[name], truth)
        wd = metrics.wd_scaled(preds[name], truth)
        rows.append({"method": name, "jsd_mean": float(j.mean()), "jsd_wmean": float((j * w).sum()),
                     "wd_scaled_mean": float(wd.mean())})
    out = pd.DataFrame(rows)
    for k, v in (("per_subgroup", case.per_subgroup), ("interaction", case.interaction),
                 ("table_seed", case.table_seed), ("sample_seed", case.sample_seed)):
        out.insert(0, k, v)
    return out, {**{"per_subgroup": case.per_subgroup, "interaction": case.interaction,
                    "table_seed": case.table_seed, "sample_seed": case.sample_seed}, **diag}


# --------------------------------------------------------------------------
# Studies over a grid (the phase2_check notebook)
# --------------------------------------------------------------------------


def target_study(per_subgroup, interactions, n_tables: int, levels, n_options: int, effect_scale: float,
                 imbalance: float, operators=("quantile", "ratio"), phase2: dict | None = None, seed: int = 0,
                 operator_weights: str = "uniform") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Phase 2's targets without a language model: TS, MNL and ``ideal-P2(TS)`` for each operator kind.

    Returns (errors, diagnostics), one row per (cell, table, operator, method) / (cell, table, operator).
    """
    rows, diags = [], []
    for per in per_subgroup:
        for inter in interactions:
            for t in range(n_tables):
                for op in operators:
                    r, d = run_case(Case(per, inter, seed * 10_000 + t), levels, n_options, effect_scale, imbalance,
                                    phase2=phase2, methods=("TS", "MNL", "ideal-P2(TS)"),
                                    operator_weights=operator_weights, operator=op)
                    rows.append(r.assign(operator=op))
                    diags.append({**d, "operator": op})
    return pd.concat(rows, ignore_index=True), pd.DataFrame(diags)


def llm_study(lm, per_subgroup, interactions, n_tables: int, levels, n_options: int, effect_scale: float,
              imbalance: float, variants: dict, phase1: dict | None = None, seed: int = 0,
              progress=print) -> tuple[pd.DataFrame, pd.DataFrame]:
    """TS, MNL, TKFT and one DSA per variant (``{name: phase2 fields}``) on each cell of the grid.

    Every variant shares TKFT's Phase 1 (memoised by the language model), so a
    variant costs only its Phase 2.  ``ideal-P2(TKFT)`` is computed with each
    variant's operator.  Returns (errors, diagnostics) with a ``variant`` column;
    TS, MNL and TKFT rows appear once per cell (variant ``-``).
    """
    rows, diags = [], []
    for per in per_subgroup:
        for inter in interactions:
            for t in range(n_tables):
                case = Case(per, inter, seed * 10_000 + t)
                for i, (name, p2) in enumerate(variants.items()):
                    p2 = dict(p2)
                    op = p2.get("operator", "quantile")
                    r, d = run_case(case, levels, n_options, effect_scale, imbalance, lm=lm, phase1=phase1,
                                    phase2=p2, methods=("TS", "MNL", "TKFT", "DSA", "ideal-P2(TKFT)"),
                                    operator_weights=p2.get("operator_weights", "uniform"), operator=op)
                    r["variant"] = np.where(r.method.isin(["DSA", "ideal-P2(TKFT)"]), name, "-")
                    r["method"] = np.where(r.method == "DSA", name,
                                           np.where(r.method == "ideal-P2(TKFT)", f"ideal-P2(TKFT) {name}", r.method))
                    rows.append(r if i == 0 else r[r.variant != "-"])
                    diags.append({**d, "variant": name})
                    if progress:
                        got = r.set_index("method").jsd_mean
                        progress(f"per_subgroup={per} interaction={inter} table={t} {name}: "
                                 f"TKFT {got['TKFT']:.4f} {name} {got[name]:.4f} TS {got['TS']:.4f}")
    return pd.concat(rows, ignore_index=True), pd.DataFrame(diags)


def _is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _pos_list(name, v, kind=float, minimum=0.0, strict=True):
    if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)) or not v:
        raise ParameterError(f"parameter '{name}' must be a non-empty list, got {v!r}")
    out = []
    for x in v:
        ok = _is_int(x) if kind is int else isinstance(x, Real) and not isinstance(x, bool) and np.isfinite(float(x))
        if not ok or x < minimum or (strict and x == minimum):
            rel = ">" if strict else "≥"
            raise ParameterError(f"parameter '{name}' must list {kind.__name__}s {rel} {minimum}, got {x!r}")
        out.append(kind(x))
    return out


def check_params(p: dict) -> dict:
    """Validate the phase2_check notebook's values (:class:`dsalib.config.Phase2CheckConfig` calls it; names and
    types are checked there)."""
    from .train import Phase1Config, Phase2Config

    out = dict(p)
    out["per_subgroup"] = _pos_list("per_subgroup", p["per_subgroup"])
    out["llm_per_subgroup"] = _pos_list("llm_per_subgroup", p["llm_per_subgroup"]) if p["llm_per_subgroup"] else []
    out["interactions"] = _pos_list("interactions", p["interactions"], strict=False)
    out["llm_interactions"] = _pos_list("llm_interactions", p["llm_interactions"], strict=False)
    out["levels"] = list(theorem._check_levels_arg(p["levels"]))
    _spec(tuple(out["levels"]), p["n_options"] if _is_int(p["n_options"]) else -1)
    for name in ("n_tables", "llm_tables"):
        if not _is_int(p[name]) or p[name] < 1:
            raise ParameterError(f"parameter '{name}' must be an integer ≥ 1, got {p[name]!r}")
    for name, strict in (("effect_scale", True), ("imbalance", False)):
        v = p[name]
        if not isinstance(v, Real) or isinstance(v, bool) or not np.isfinite(v) or v < 0 or (strict and v == 0):
            raise ParameterError(f"parameter '{name}' must be a finite number {'>' if strict else '≥'} 0, got {v!r}")
    if not isinstance(p["variants"], dict) or not p["variants"]:
        raise ParameterError("parameter 'variants' must map DSA variant names to Phase 2 settings")
    for name, fields in {"phase1": p["phase1"], **{f"variants.{k}": v for k, v in p["variants"].items()}}.items():
        cls = Phase1Config if name == "phase1" else Phase2Config
        try:
            cls(**dict(fields)).check()
        except (TypeError, DsaError) as e:
            raise ParameterError(f"parameter '{name}': {e}") from None
    ops = p["operators"]
    if not isinstance(ops, (list, tuple)) or not ops or any(o not in quantile.OPERATORS for o in ops):
        raise ParameterError(f"parameter 'operators' must list kinds among {quantile.OPERATORS}, got {ops!r}")
    return out
