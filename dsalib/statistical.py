"""Statistical baselines (no language model): main-effects logit, ordinal logit, stacked logit.

Both follow the method interface of :mod:`dsalib.baselines` (``fit(train)``,
``predict(keys) -> (G, K)``, ``name``) and predict for any combination of
levels, including subgroups absent from the training sample.

- :class:`MainEffectsLogit` ("MNL"): multinomial logit on one-hot background
  levels, ``P(C | b) ∝ exp(α_C + Σ_k β_{k, b_k, C})``, i.e. exactly the
  factorised form ``Π_k φ_k(C, b_k)`` of the DSA paper's Theorem 1.  L2
  penalty (scikit-learn ``LogisticRegression``, lbfgs, every level one-hot so
  the penalty treats levels symmetrically; the intercepts are not penalised),
  its strength ``C`` chosen by K-fold cross-validated log-loss *over
  respondents* (the count table is expanded into one row per respondent and the
  respondents are split into folds; each fold's model is fitted on the
  aggregated counts with sample weights, which has the same likelihood).
- :class:`OrdinalLogit` ("POLR"): proportional-odds ordinal logit (statsmodels
  ``OrderedModel``, logit link) on one-hot background levels with the first
  level of each attribute dropped and no constant (the thresholds absorb it).
- :class:`StackedLogit` ("Stacked-MNL"): the MNL fitted jointly with the
  survey's other questions of the same number of options, background effects
  shared across questions plus per-question deviations (the non-LLM control
  for a cross-question prior).

Common rules (recorded by :meth:`describe`):

- **Pseudo-counts.** ``pseudo_count`` respondents in total (default 1) are
  spread uniformly over every (training subgroup, option) cell before fitting.
  This keeps every option in the model, so an option that no training
  respondent chose still gets a small positive probability (of the order of
  ``pseudo_count / n``) instead of being dropped; with 500 respondents it
  moves nothing else measurably.  With ``pseudo_count=0`` an option never
  observed is left out of the fit and predicted with probability 0.
- **Levels absent from training.** A level no training respondent has gets a
  zero design column: MNL leaves its coefficients at 0 (the L2 penalty's
  minimum), POLR drops the column, so it is predicted like the reference
  level.  Either way every key gets a prediction.
- **Weighted tables.** Counts may be non-integer (weighted tables); MNL's
  cross-validation then splits (subgroup, option) cells instead of
  respondents (recorded in ``cv_unit_``).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from .baselines import _check_keys, _check_train
from .errors import DsaError
from .surveys import SubgroupTable

#: Default grid of inverse L2 strengths for :class:`MainEffectsLogit`.
DEFAULT_C_GRID = tuple(float(c) for c in np.logspace(-3, 2, 11))


def _single_thread_blas():
    """BLAS limited to one thread: these problems are tiny, and threaded BLAS on a
    shared 2-core machine made the lbfgs fits ~10x slower (measured)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def cv_jobs(folds: int) -> int:
    """Processes for cross-validation folds: one per CPU this process may use, at most one per fold.

    The folds are independent, deterministic fits whose results are added in
    fold order, so the result is the same for any number of processes."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(int(folds), cpus))


def _logit_predict(method, keys, design) -> np.ndarray:
    """A fitted scikit-learn logit's option distributions for ``keys`` (design matrix ``design(keys)``)."""
    if method.model_ is None:
        raise DsaError("call fit() before predict()")
    keys = _check_keys(method.train, keys)
    if len(keys) == 0:
        return np.zeros((0, method._k))
    return _full_probs(method.model_.predict_proba(design(keys)), method.model_.classes_, method._k)


def one_hot(keys: np.ndarray, n_levels: tuple[int, ...], drop_first: bool = False) -> np.ndarray:
    """One-hot design of level-index keys (G, m): every level, or all but the first of each attribute."""
    keys = np.asarray(keys, dtype=np.int64)
    blocks = []
    for j, L in enumerate(n_levels):
        block = np.zeros((len(keys), L))
        block[np.arange(len(keys)), keys[:, j]] = 1.0
        blocks.append(block[:, 1:] if drop_first else block)
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(keys), 0))


def _cells(train: SubgroupTable, pseudo_count: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Long form of the count table: (subgroup row, option, weight) per cell with positive weight."""
    g, k = train.counts.shape
    w = train.counts.astype(float).copy()
    if pseudo_count > 0:
        w += pseudo_count / (g * k)
    rows, opts = np.nonzero(w > 0)
    return rows, opts, w[rows, opts]


def _check_pseudo(pseudo_count) -> float:
    try:
        val = float(pseudo_count)
    except (TypeError, ValueError):
        raise DsaError(f"pseudo_count must be a non-negative number, got {pseudo_count!r}") from None
    if not np.isfinite(val) or val < 0:
        raise DsaError(f"pseudo_count must be a non-negative number, got {pseudo_count!r}")
    return val


def _full_probs(proba: np.ndarray, classes: np.ndarray, k: int) -> np.ndarray:
    """Columns for the fitted classes placed into K option columns (0 for options left out)."""
    out = np.zeros((len(proba), k))
    out[:, np.asarray(classes, dtype=np.int64)] = proba
    out = np.clip(out, 0.0, None)
    return out / out.sum(axis=1, keepdims=True)


def _fit_quietly(model, X, y, w):
    """``model.fit(X, y, sample_weight=w)`` without scikit-learn's convergence and user warnings (the CV checks fits)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*did not converge.*")
        warnings.filterwarnings("ignore", category=UserWarning)
        model.fit(X, y, sample_weight=w)
    return model


@dataclass
class MainEffectsLogit:
    """MNL: main-effects multinomial logit with an L2 penalty chosen by cross-validation.

    Parameters: ``Cs`` grid of inverse penalty strengths (scikit-learn ``C``;
    a single value skips CV), ``cv`` number of folds (over respondents),
    ``seed`` for the fold split, ``pseudo_count`` (see the module docstring),
    ``max_iter`` for lbfgs.  After ``fit``: ``C_`` (chosen), ``cv_scores_``
    (mean held-out log-loss per respondent for each C), ``model_`` (the
    fitted ``LogisticRegression``).
    """

    name: str = "MNL"
    Cs: tuple = DEFAULT_C_GRID
    cv: int = 5
    seed: int = 0
    pseudo_count: float = 1.0
    max_iter: int = 1000
    C_: float | None = field(default=None, init=False)
    cv_scores_: dict | None = field(default=None, init=False, repr=False)
    cv_unit_: str | None = field(default=None, init=False)
    model_: object = field(default=None, init=False, repr=False)
    train: SubgroupTable | None = field(default=None, init=False, repr=False)

    def _model(self, C: float, warm_start: bool = False):
        from sklearn.linear_model import LogisticRegression

        # l1_ratio=0 is the L2 penalty; lbfgs fits the multinomial (softmax) loss
        return LogisticRegression(C=C, l1_ratio=0.0, solver="lbfgs", max_iter=self.max_iter,
                                  warm_start=warm_start)

    def _fit_cells(self, X, y, w, C, model=None):
        if model is None:
            model = self._model(C)
        else:
            model.set_params(C=C)
        return _fit_quietly(model, X, y, w)

    def fit(self, train: SubgroupTable, **context) -> "MainEffectsLogit":
        _check_train(train)
        pseudo = _check_pseudo(self.pseudo_count)
        Cs = [float(c) for c in np.atleast_1d(np.asarray(self.Cs, dtype=float))]
        if not Cs or any(not np.isfinite(c) or c <= 0 for c in Cs):
            raise DsaError(f"Cs must be positive finite numbers, got {self.Cs!r}")
        if isinstance(self.cv, bool) or not isinstance(self.cv, (int, np.integer)) or self.cv < 2:
            raise DsaError(f"cv must be an integer ≥ 2 (number of folds), got {self.cv!r}")
        self.train = train
        n_levels = tuple(len(lv) for lv in train.levels)
        k = train.n_options
        rows, opts, w = _cells(train, pseudo)
        if len(np.unique(opts)) < 2:
            raise DsaError(
                f"the training sample for '{train.question}' uses a single option; "
                "a logit needs at least two (use pseudo_count > 0 or a larger sample)"
            )
        X_sub = one_hot(train.keys, n_levels)
        with _single_thread_blas():
            if len(Cs) == 1:
                self.C_, self.cv_scores_ = Cs[0], None
            else:
                self.C_, self.cv_scores_ = self._cross_validate(train, X_sub, Cs, pseudo)
            self.model_ = self._fit_cells(X_sub[rows], opts, w, self.C_)
        self._k = k
        self._n_levels = n_levels
        return self

    def _cross_validate(self, train, X_sub, Cs, pseudo):
        from sklearn.model_selection import KFold

        g, k = train.counts.shape
        counts = train.counts
        integral = np.allclose(counts, np.round(counts))
        if integral:
            # one row per respondent: (subgroup row, option), split into folds
            c = np.round(counts).astype(np.int64)
            r, o = np.nonzero(c)
            resp_sub = np.repeat(r, c[r, o])
            resp_opt = np.repeat(o, c[r, o])
            resp_w = np.ones(len(resp_sub))
            self.cv_unit_ = "respondents"
        else:
            r, o = np.nonzero(counts > 0)
            resp_sub, resp_opt, resp_w = r, o, counts[r, o]
            self.cv_unit_ = "cells (weighted table)"
        n_units = len(resp_sub)
        if n_units < self.cv:
            raise DsaError(
                f"{n_units} training {self.cv_unit_} cannot be split into {self.cv} folds; "
                "use fewer folds or a single C"
            )
        folds = list(KFold(n_splits=self.cv, shuffle=True, random_state=self.seed).split(np.arange(n_units)))
        units = (resp_sub, resp_opt, resp_w)
        jobs = cv_jobs(len(folds))
        if jobs > 1:
            from joblib import Parallel, delayed

            per_fold = Parallel(n_jobs=jobs)(delayed(self._fold_losses)(X_sub, units, tr, te, Cs, pseudo, g, k)
                                             for tr, te in folds)
        else:
            per_fold = [self._fold_losses(X_sub, units, tr, te, Cs, pseudo, g, k) for tr, te in folds]
        loss = np.zeros(len(Cs))
        total_w = 0.0
        for fold_loss, fold_w in per_fold:  # in fold order, as one process would add them
            if fold_loss is not None:
                loss += fold_loss
                total_w += fold_w
        if total_w <= 0:
            raise DsaError("cross-validation failed: no fold had two or more options to fit")
        scores = {C: float(l / total_w) for C, l in zip(Cs, loss)}
        best = Cs[int(np.argmin(loss))]
        return best, scores

    def _fold_losses(self, X_sub, units, tr, te, Cs, pseudo, g, k):
        """Held-out log-loss of each C on one fold (None when the fold's training part has one option)."""
        from sklearn.metrics import log_loss

        resp_sub, resp_opt, resp_w = units
        with _single_thread_blas():
            fold_counts = np.zeros((g, k))
            np.add.at(fold_counts, (resp_sub[tr], resp_opt[tr]), resp_w[tr])
            present = fold_counts.sum(axis=1) > 0
            fc = fold_counts[present]
            if pseudo > 0:
                fc = fc + pseudo / (fc.size)
            rr, oo = np.nonzero(fc > 0)
            X_tr = X_sub[present][rr]
            X_te = X_sub[resp_sub[te]]
            if len(np.unique(oo)) < 2:
                return None, 0.0
            loss = np.zeros(len(Cs))
            # walk the C path from strong to weak penalty, each fit starting from the last
            path = self._model(Cs[0], warm_start=True)
            for i in np.argsort(Cs):
                model = self._fit_cells(X_tr, oo, fc[rr, oo], Cs[i], model=path)
                proba = _full_probs(model.predict_proba(X_te), model.classes_, k)
                proba = np.clip(proba, 1e-12, None)
                proba /= proba.sum(axis=1, keepdims=True)
                loss[i] = log_loss(resp_opt[te], proba, sample_weight=resp_w[te], labels=np.arange(k),
                                   normalize=False)
            return loss, float(resp_w[te].sum())

    def predict(self, keys) -> np.ndarray:
        return _logit_predict(self, keys, lambda k: one_hot(k, self._n_levels))

    def describe(self) -> dict:
        return {
            "method": self.name,
            "model": "main-effects multinomial logit, one-hot levels, L2 (sklearn LogisticRegression lbfgs)",
            "C": self.C_,
            "C_grid": list(map(float, np.atleast_1d(self.Cs))),
            "cv_folds": self.cv,
            "cv_unit": self.cv_unit_,
            "cv_seed": self.seed,
            "pseudo_count": self.pseudo_count,
        }


def _weighted_ordered_model():
    from statsmodels.miscmodels.ordinal_model import OrderedModel

    class WeightedOrderedModel(OrderedModel):
        """``OrderedModel`` whose log-likelihood weights each row (a count-table cell)."""

        def __init__(self, endog, exog, case_weights, **kwds):
            super().__init__(endog, exog, **kwds)
            self.case_weights = np.asarray(case_weights, dtype=float)

        def loglikeobs(self, params):
            return self.case_weights * super().loglikeobs(params)

        @property
        def start_params(self):
            freq = np.bincount(self.endog, weights=self.case_weights, minlength=self.k_levels)
            freq = freq / freq.sum()
            start_ppf = self.distr.ppf(np.clip(freq.cumsum(), 0, 1))
            start_threshold = self.transform_reverse_threshold_params(start_ppf)
            return np.concatenate((np.zeros(self.k_vars), start_threshold))

    return WeightedOrderedModel


@dataclass
class OrdinalLogit:
    """POLR: proportional-odds ordinal logit (statsmodels ``OrderedModel``, logit link).

    ``P(C ≤ c | b) = logistic(θ_c - Σ_k β_{k, b_k})`` with the first level of
    each attribute as reference (β = 0) and no constant.  The model is fitted
    by maximum likelihood on the count table's cells with their counts as
    weights (the same likelihood as one row per respondent).  Parameters:
    ``pseudo_count`` (see the module docstring), ``method``/``maxiter`` for
    statsmodels' optimiser.  After ``fit``: ``result_`` (statsmodels results),
    ``columns_`` (the design columns kept), ``options_`` (options in the fit).
    """

    name: str = "POLR"
    pseudo_count: float = 1.0
    method: str = "bfgs"
    maxiter: int = 2000
    result_: object = field(default=None, init=False, repr=False)
    columns_: np.ndarray | None = field(default=None, init=False, repr=False)
    options_: np.ndarray | None = field(default=None, init=False, repr=False)
    converged_: bool | None = field(default=None, init=False)
    train: SubgroupTable | None = field(default=None, init=False, repr=False)

    def fit(self, train: SubgroupTable, **context) -> "OrdinalLogit":
        _check_train(train)
        pseudo = _check_pseudo(self.pseudo_count)
        self.train = train
        self._n_levels = tuple(len(lv) for lv in train.levels)
        self._k = train.n_options
        rows, opts, w = _cells(train, pseudo)
        options = np.unique(opts)
        if len(options) < 2:
            raise DsaError(
                f"the training sample for '{train.question}' uses a single option; "
                "an ordinal logit needs at least two (use pseudo_count > 0 or a larger sample)"
            )
        endog = np.searchsorted(options, opts)  # ranks among the options in the fit
        X_all = one_hot(train.keys, self._n_levels, drop_first=True)[rows]
        # drop columns that do not vary in the training cells (absent levels, or a constant)
        keep = X_all.std(axis=0) > 0
        X = X_all[:, keep]
        Model = _weighted_ordered_model()
        with warnings.catch_warnings(), _single_thread_blas():
            warnings.simplefilter("ignore")
            model = Model(endog.astype(float), X if X.shape[1] else None, case_weights=w, distr="logit")
            res = model.fit(method=self.method, maxiter=self.maxiter, disp=False)
        params = np.asarray(res.params, dtype=float)
        if not np.isfinite(params).all():
            raise DsaError(f"the ordinal logit for '{train.question}' did not converge to finite parameters")
        self.result_ = res
        self._model = model
        self.columns_ = keep
        self.options_ = options
        self.converged_ = bool(res.mle_retvals.get("converged", True)) if hasattr(res, "mle_retvals") else None
        return self

    def predict(self, keys) -> np.ndarray:
        if self.result_ is None:
            raise DsaError("call fit() before predict()")
        keys = _check_keys(self.train, keys)
        X = one_hot(keys, self._n_levels, drop_first=True)[:, self.columns_]
        params = np.asarray(self.result_.params, dtype=float)
        n_beta = X.shape[1]
        beta = params[:n_beta]
        thresh = self._model.transform_threshold_params(params)  # (-inf, θ_1, ..., θ_{K'-1}, inf)
        xb = X @ beta
        cdf = self._model.cdf(thresh[None, :] - xb[:, None])
        proba = np.diff(cdf, axis=1)
        return _full_probs(np.clip(proba, 0.0, None), self.options_, self._k)

    def describe(self) -> dict:
        return {
            "method": self.name,
            "model": "proportional-odds ordinal logit (statsmodels OrderedModel, logit link), "
                     "one-hot levels without the first of each attribute, no constant",
            "pseudo_count": self.pseudo_count,
            "converged": self.converged_,
        }


@dataclass
class StackedLogit:
    """Stacked MNL: one multinomial logit fitted on several questions, main effects partly shared.

    The non-LLM control for a cross-question prior (an LLM fine-tuned on other
    questions): it borrows strength from the other questions' answers through
    background effects shared across questions.  For question ``t`` and
    subgroup ``b``::

        P(C = c | b, t) ∝ exp( α_{t,c} + Σ_k ( β_{k, b_k, c} + δ_{t, k, b_k, c} ) )

    ``α_t``: question-specific intercepts (unpenalised for the target); ``β``: main effects *shared* by all
    stacked questions; ``δ_t``: each question's own deviation from them.
    With ``δ`` alone it is one MNL per question (:class:`MainEffectsLogit`);
    with ``β`` alone every question has the same background effects.

    **Which questions are stacked.**  Effects are per option, so they can only
    be shared between questions with the same number of options K, whose
    options are aligned by position (option ``c`` of one question with option
    ``c`` of another: on ordinal scales coded in the same direction, a shift
    toward the top of the scale).  Other questions with another K are left
    out (listed in ``skipped_``).  A shared effect with the wrong sign for
    some question is corrected by that question's ``δ``, at a penalty cost.

    **Penalty.**  One L2 penalty (scikit-learn ``LogisticRegression``, lbfgs)
    on design columns scaled so that: ``δ`` columns have scale 1, ``β``
    columns scale ``share`` (the shared effects are penalised ``1/share²`` as
    much: ``share = 0`` drops them, and the target's fit is then its own MNL),
    the other questions' intercept columns (their offsets from the target's)
    scale ``intercept_scale`` (nearly unpenalised).  The target's intercept
    is the model's own, unpenalised, as in :class:`MainEffectsLogit`.  ``share`` and the strength
    ``C`` are chosen on a grid (``shares`` × ``Cs``) by K-fold cross-validated
    log-loss over the *target's* training respondents: each fold's model is
    fitted on the other folds plus every other question's table, and scored
    on the held-out target respondents only.

    Parameters: ``others`` (the other questions' :class:`SubgroupTable`s, same
    attributes and levels as the target; or pass ``others=`` to ``fit``),
    ``survey`` (instead of ``others``: every other core question of this
    survey, all its eligible respondents, tabulated on the target's
    attributes), ``Cs``, ``shares``, ``cv``, ``seed``, ``pseudo_count`` (per
    table, see the module docstring), ``intercept_scale``, ``max_iter`` and
    ``tol`` (lbfgs; ``tol`` is scikit-learn's default, as for MNL).  Cost:
    ``len(shares) × len(Cs) × cv + 1`` fits of a model with about
    ``questions × levels × (K + 1)`` parameters; the C path is warm-started.
    On GSS 2018 (18 items, 4 attributes) one fit took 2-4 s on the shared
    2-core machine, so the default grid costs a few minutes per fit.
    After ``fit``: ``C_``, ``share_``, ``cv_scores_`` (``{(share, C): mean
    held-out log-loss}``), ``stacked_`` (the questions used), ``skipped_``
    (``{question: reason}``).
    """

    name: str = "Stacked-MNL"
    others: tuple = ()
    survey: object = field(default=None, repr=False)
    Cs: tuple = (0.03, 0.3, 3.0)
    shares: tuple = (0.0, 1.0, 3.0)
    cv: int = 3
    seed: int = 0
    pseudo_count: float = 1.0
    intercept_scale: float = 10.0
    max_iter: int = 5000
    tol: float = 1e-4
    C_: float | None = field(default=None, init=False)
    share_: float | None = field(default=None, init=False)
    cv_scores_: dict | None = field(default=None, init=False, repr=False)
    stacked_: list | None = field(default=None, init=False)
    skipped_: dict | None = field(default=None, init=False)
    model_: object = field(default=None, init=False, repr=False)
    train: SubgroupTable | None = field(default=None, init=False, repr=False)

    def _other_tables(self, train: SubgroupTable, others) -> list:
        if others is None and not self.others and self.survey is None:
            raise DsaError(f"{self.name} needs the other questions: give others=[tables] or survey=")
        if others is None and not self.others:
            from .surveys import subgroup_table

            others = [subgroup_table(self.survey, q, train.attributes)
                      for q in self.survey.core if q != train.question]
        tables = list(others if others is not None else self.others)
        for t in tables:
            if tuple(t.attributes) != tuple(train.attributes) or tuple(map(tuple, t.levels)) != tuple(
                    map(tuple, train.levels)):
                raise DsaError(f"the table of '{t.question}' has attributes/levels {t.attributes} that differ from "
                               f"the target's {train.attributes}; tabulate every question on the same background")
        return tables

    def _design(self, keys: np.ndarray, task: int, n_tasks: int, share: float) -> np.ndarray:
        x = one_hot(keys, self._n_levels)
        blocks = []
        if share > 0:
            blocks.append(share * x)
        dev = np.zeros((len(keys), n_tasks * x.shape[1]))
        dev[:, task * x.shape[1]:(task + 1) * x.shape[1]] = x
        icpt = np.zeros((len(keys), n_tasks - 1))  # the target (task 0) has the model's own intercept
        if task > 0:
            icpt[:, task - 1] = self.intercept_scale
        return np.concatenate(blocks + [dev, icpt], axis=1)

    def _stack(self, tables: list, share: float):
        """Design, labels and weights of the cells of ``tables`` (table i is task i)."""
        X, y, w = [], [], []
        for i, t in enumerate(tables):
            rows, opts, wt = _cells(t, self._pseudo)
            X.append(self._design(t.keys, i, len(tables), share)[rows])
            y.append(opts)
            w.append(wt)
        return np.concatenate(X), np.concatenate(y), np.concatenate(w)

    def _fit_model(self, X, y, w, C, model=None):
        from sklearn.linear_model import LogisticRegression

        if model is None:
            model = LogisticRegression(C=C, l1_ratio=0.0, solver="lbfgs", max_iter=self.max_iter, tol=self.tol,
                                       warm_start=True)
        model.set_params(C=C)
        return _fit_quietly(model, X, y, w)

    def fit(self, train: SubgroupTable, others=None, **context) -> "StackedLogit":
        _check_train(train)
        self._pseudo = _check_pseudo(self.pseudo_count)
        Cs = [float(c) for c in np.atleast_1d(np.asarray(self.Cs, dtype=float))]
        shares = [float(s) for s in np.atleast_1d(np.asarray(self.shares, dtype=float))]
        if not Cs or any(not np.isfinite(c) or c <= 0 for c in Cs):
            raise DsaError(f"Cs must be positive finite numbers, got {self.Cs!r}")
        if not shares or any(not np.isfinite(s) or s < 0 for s in shares):
            raise DsaError(f"shares must be non-negative finite numbers, got {self.shares!r}")
        if isinstance(self.cv, bool) or not isinstance(self.cv, (int, np.integer)) or self.cv < 2:
            raise DsaError(f"cv must be an integer ≥ 2 (number of folds), got {self.cv!r}")
        tables = self._other_tables(train, others)
        k = train.n_options
        self.skipped_ = {t.question: f"{t.n_options} options, the target has {k}" for t in tables if t.n_options != k}
        tables = [t for t in tables if t.n_options == k and t.question != train.question and t.n_subgroups]
        if not tables:
            raise DsaError(f"no other question with {k} options to stack with '{train.question}' "
                           f"(skipped: {self.skipped_ or 'none given'}); use MNL instead")
        self.train = train
        self._n_levels = tuple(len(lv) for lv in train.levels)
        self._k = k
        self._n_tasks = len(tables) + 1
        self.stacked_ = [train.question] + [t.question for t in tables]
        with _single_thread_blas():
            if len(Cs) * len(shares) == 1:
                self.C_, self.share_, self.cv_scores_ = Cs[0], shares[0], None
            else:
                self.C_, self.share_, self.cv_scores_ = self._cross_validate(train, tables, Cs, shares)
            X, y, w = self._stack([train] + tables, self.share_)
            if len(np.unique(y)) < 2:
                raise DsaError(f"the stacked tables use a single option; {self.name} needs at least two")
            self.model_ = self._fit_model(X, y, w, self.C_)
        return self

    def _cross_validate(self, train, tables, Cs, shares):
        from sklearn.metrics import log_loss
        from sklearn.model_selection import KFold

        if not np.allclose(train.counts, np.round(train.counts)):
            raise DsaError(f"{self.name} cross-validates over respondents and needs an integer count table; "
                           "give a single C and share")
        c = np.round(train.counts).astype(np.int64)
        r, o = np.nonzero(c)
        resp_sub, resp_opt = np.repeat(r, c[r, o]), np.repeat(o, c[r, o])
        if len(resp_sub) < self.cv:
            raise DsaError(f"{len(resp_sub)} training respondents cannot be split into {self.cv} folds")
        k = train.n_options
        loss = np.zeros((len(shares), len(Cs)))
        total = 0
        for tr, te in KFold(n_splits=self.cv, shuffle=True, random_state=self.seed).split(resp_sub):
            fc = np.zeros_like(c, dtype=float)
            np.add.at(fc, (resp_sub[tr], resp_opt[tr]), 1.0)
            keep = fc.sum(axis=1) > 0
            fold = SubgroupTable(dataset=train.dataset, question=train.question, attributes=train.attributes,
                                 levels=train.levels, keys=train.keys[keep], counts=fc[keep],
                                 n=fc[keep].sum(axis=1).astype(np.int64), option_labels=train.option_labels)
            for i, share in enumerate(shares):
                X, y, w = self._stack([fold] + tables, share)
                X_te = self._design(train.keys[resp_sub[te]], 0, self._n_tasks, share)
                model = None
                for j in np.argsort(Cs):
                    model = self._fit_model(X, y, w, Cs[j], model)
                    proba = np.clip(_full_probs(model.predict_proba(X_te), model.classes_, k), 1e-12, None)
                    proba /= proba.sum(axis=1, keepdims=True)
                    loss[i, j] += log_loss(resp_opt[te], proba, labels=np.arange(k), normalize=False)
            total += len(te)
        scores = {(s, C): float(loss[i, j] / total) for i, s in enumerate(shares) for j, C in enumerate(Cs)}
        i, j = np.unravel_index(int(np.argmin(loss)), loss.shape)
        return Cs[j], shares[i], scores

    def predict(self, keys) -> np.ndarray:
        return _logit_predict(self, keys, lambda k: self._design(k, 0, self._n_tasks, self.share_))

    def describe(self) -> dict:
        return {
            "method": self.name,
            "model": "stacked multinomial logit: question intercepts + shared main effects (scale share) "
                     "+ per-question deviations, one L2 penalty (sklearn lbfgs)",
            "C": self.C_,
            "share": self.share_,
            "C_grid": list(map(float, np.atleast_1d(self.Cs))),
            "share_grid": list(map(float, np.atleast_1d(self.shares))),
            "cv_folds": self.cv,
            "cv_seed": self.seed,
            "stacked_questions": self.stacked_,
            "skipped_questions": self.skipped_,
            "pseudo_count": self.pseudo_count,
        }
