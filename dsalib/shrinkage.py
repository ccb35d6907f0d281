"""Empirical-Bayes Dirichlet-multinomial shrinkage toward any prior prediction.

Model: subgroup ``g``'s answer distribution ``θ_g ~ Dirichlet(α · π_g)``, where
``π_g`` is a *prior prediction* for ``g`` (from any method: the main-effects
logit, an LLM, ...), and the training counts ``x_g | θ_g ~ Multinomial(n_g, θ_g)``.
The prediction is the posterior mean::

    P̂(C | g) = (x_g + α π_g) / (n_g + α)

so ``α`` acts as a number of pseudo-respondents: small subgroups follow the
prior, large ones their own counts.  A subgroup absent from the training sample
(``n_g = 0``) gets the prior itself.

``α`` is chosen by maximising a Dirichlet-multinomial likelihood over
``log α`` in ``alpha_bounds`` (``scipy.optimize.minimize_scalar``)::

    log p(x | α, π) = Σ_g [ log Γ(α) - log Γ(n_g + α)
                            + Σ_c ( log Γ(x_gc + α π_gc) - log Γ(α π_gc) ) ] + const

An estimate at the upper bound means the counts are no noisier than sampling
noise around the prior (predict ≈ the prior); at the lower bound, the prior
explains little (predict ≈ the training sample).  Two estimators
(``concentration``):

- ``"marginal"``: the likelihood of the full training counts ``x`` around the
  prior ``π`` fitted on those same counts (the classical empirical-Bayes
  recipe).  The prior fits those counts better than it would fit fresh data,
  so the counts look less dispersed around it than they are and ``α`` is
  overestimated (too much shrinkage toward the prior).  For a low-dimensional
  prior on many respondents per subgroup the bias is small; on a large,
  sparse table (thousands of subgroups with one or two respondents each) it
  is not: the likelihood is flat in ``α`` and the estimate runs to its upper
  bound, so the result equals the prior.
- ``"crossfit"``: the respondents of the training table are split at random
  (``seed``) into ``folds`` folds of equal size (:func:`fold_tables`).  For
  each fold ``f`` a fresh copy of the prior method is fitted on the other
  folds, ``π^(-f)``, and scores fold ``f``'s counts ``x^(f)``::

      α̂ = argmax_α Σ_f log p(x^(f) | α, π^(-f))

  so ``α`` measures how well the prior predicts respondents it was not fitted
  on.  The prediction then shrinks the *full* training counts toward the prior
  fitted on the *full* training table with that ``α``:
  ``(x_g + α̂ π_g) / (n_g + α̂)``.  The prior on ``(folds-1)/folds`` of the
  data is a little noisier than the full-data prior, so ``α̂`` errs, if at all,
  toward too little shrinkage.  Cost: ``folds`` extra fits of the prior (the
  copies; the full-data prior is fitted once, or reused when
  ``prior_fitted``).  It needs a prior method that can be copied unfitted
  (:func:`unfitted_copy`) and an integer count table.

A prior fitted elsewhere (an LLM used zero-shot, a model fitted on other data,
a callable) has no such bias: use ``"marginal"`` with it.

Measured (``benchmarks/eb_compare.py``, README "Empirical-Bayes shrinkage"):
on the embedded surveys at n = 500 the cross-fitted α is far smaller (median
27-82 where the marginal one is often at its bound), which helps only against
a truth that contains the training sample; against held-out respondents it is
slightly worse.  The default therefore stays ``"marginal"``.

The prior can be

- a method instance that is not fitted yet: ``fit(train)`` fits it first
  (default: :class:`dsalib.statistical.MainEffectsLogit`, giving "EB-MNL");
- a method instance that is already fitted: pass ``prior_fitted=True`` and it
  is only asked to ``predict``, never refitted (e.g. the MNL or the fine-tuned
  LLM that :func:`dsalib.experiments.run_enhancement` fitted on the same
  training table just before, or a method fitted by other code); the
  ``"crossfit"`` estimator fits its per-fold *copies*, never the instance
  given;
- a callable ``keys -> (G, K) probabilities`` (treated as fitted).

Prior probabilities are floored at ``prior_floor`` and renormalised, so an
option the prior rules out but a respondent chose does not make the
likelihood ``-inf``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import gammaln

from .baselines import _check_keys, _check_train
from .errors import DsaError
from .surveys import SubgroupTable


def dirichlet_multinomial_loglik(counts: np.ndarray, prior: np.ndarray, alpha: float) -> float:
    """``Σ_g log p(x_g | α π_g)`` without the multinomial coefficient (constant in α)."""
    counts = np.asarray(counts, dtype=float)
    prior = np.asarray(prior, dtype=float)
    n = counts.sum(axis=1)
    a = alpha * prior
    pos = counts > 0
    terms = np.where(pos, gammaln(np.where(pos, counts + a, 1.0)) - gammaln(np.where(pos, a, 1.0)), 0.0)
    return float((gammaln(alpha) - gammaln(n + alpha)).sum() + terms.sum())


CONCENTRATIONS = ("marginal", "crossfit")
#: Fields that hold a method's fitted state (reset by :func:`unfitted_copy`).
_FITTED_STATE = ("train", "report")


def unfitted_copy(method):
    """A new, unfitted instance of ``method`` with the same constructor settings.

    A method may define ``unfitted_copy()`` itself.  Otherwise ``method`` must
    be a dataclass: its constructor fields are copied (shared, not deep-copied:
    a language model is not duplicated), except fitted state, which gets the
    field's default: fields named ``train`` or ``report``, names starting
    with ``_``, and fields the constructor does not take.
    """
    own = getattr(method, "unfitted_copy", None)
    if callable(own):
        return own()
    if not dataclasses.is_dataclass(method) or isinstance(method, type):
        raise DsaError(
            f"concentration='crossfit' refits the prior on parts of the sample, but the prior "
            f"{getattr(method, 'name', method)!r} is neither a dataclass nor has an unfitted_copy() method; "
            "give it one, or use concentration='marginal'"
        )
    kwargs = {f.name: getattr(method, f.name) for f in dataclasses.fields(method)
              if f.init and f.name not in _FITTED_STATE and not f.name.startswith("_")}
    return type(method)(**kwargs)


def fold_tables(table: SubgroupTable, folds: int, seed: int) -> list[tuple[SubgroupTable, SubgroupTable]]:
    """``(rest, fold)`` count tables for each of ``folds`` random folds of the respondents.

    Each respondent (one unit of an integer count) is assigned to a fold by a
    seeded random permutation dealt round-robin, so fold sizes differ by at
    most one; ``rest`` holds every other fold.  Subgroups with no respondent
    are dropped from a table.
    """
    if table.weighted or not np.allclose(table.counts, np.round(table.counts)):
        raise DsaError("the cross-fitted concentration splits respondents and needs an unweighted "
                       "(integer count) training table; use concentration='marginal'")
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise DsaError(f"folds must be an integer ≥ 2, got {folds!r}")
    c = np.round(table.counts).astype(np.int64)
    if c.sum() < folds:
        raise DsaError(f"{int(c.sum())} training respondents cannot be split into {folds} folds")
    r, o = np.nonzero(c)
    sub = np.repeat(r, c[r, o])
    opt = np.repeat(o, c[r, o])
    fold_of = np.empty(len(sub), dtype=np.int64)
    fold_of[np.random.default_rng(seed).permutation(len(sub))] = np.arange(len(sub)) % folds

    def table_of(mask: np.ndarray) -> SubgroupTable:
        counts = np.zeros_like(c)
        np.add.at(counts, (sub[mask], opt[mask]), 1)
        keep = counts.sum(axis=1) > 0
        return dataclasses.replace(table, keys=table.keys[keep], counts=counts[keep].astype(float),
                                   n=counts[keep].sum(axis=1), meta=dict(table.meta))

    return [(table_of(fold_of != f), table_of(fold_of == f)) for f in range(folds)]


@dataclass
class EBShrinkage:
    """EB shrinkage of each subgroup's training distribution toward a prior prediction.

    Parameters: ``prior`` (method, callable, or ``None`` for a
    :class:`~dsalib.statistical.MainEffectsLogit`), ``prior_fitted`` (the
    prior is already fitted: never call its ``fit``), ``concentration``
    (``"marginal"`` or ``"crossfit"``, see the module docstring), ``folds``
    and ``seed`` (the cross-fit's respondent split), ``alpha_bounds`` (search
    range for α), ``prior_floor``, ``name`` (default ``"EB-" + prior.name``).
    After ``fit``: ``alpha_`` (the estimate), ``alpha_at_bound_`` (``"lower"``,
    ``"upper"`` or ``None``), ``loglik_`` (the maximised log-likelihood: of the
    training counts for ``"marginal"``, of the held-out folds for
    ``"crossfit"``), ``fold_priors_`` (the cross-fit's fitted prior copies).
    """

    prior: Any = None
    prior_fitted: bool = False
    concentration: str = "marginal"
    folds: int = 2
    seed: int = 0
    alpha_bounds: tuple[float, float] = (1e-2, 1e6)
    prior_floor: float = 1e-6
    name: str | None = None
    alpha_: float | None = field(default=None, init=False)
    alpha_at_bound_: str | None = field(default=None, init=False)
    loglik_: float | None = field(default=None, init=False)
    fold_priors_: list | None = field(default=None, init=False, repr=False)
    train: SubgroupTable | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.prior is None:
            from .statistical import MainEffectsLogit

            self.prior = MainEffectsLogit()
        if not self._is_method and not callable(self.prior):
            raise DsaError("prior must be a method (with fit/predict) or a callable keys -> probabilities")
        lo, hi = (float(x) for x in self.alpha_bounds)
        if not (0 < lo < hi < np.inf):
            raise DsaError(f"alpha_bounds must be 0 < low < high < inf, got {self.alpha_bounds!r}")
        if not 0 <= self.prior_floor < 1:
            raise DsaError(f"prior_floor must lie in [0, 1), got {self.prior_floor!r}")
        if self.concentration not in CONCENTRATIONS:
            raise DsaError(f"concentration must be one of {CONCENTRATIONS}, got {self.concentration!r}")
        if self.concentration == "crossfit":
            if not self._is_method:
                raise DsaError("concentration='crossfit' refits the prior on parts of the sample, but a callable "
                               "prior is fixed (fitted elsewhere, so it has no same-sample bias): "
                               "use concentration='marginal'")
            if isinstance(self.folds, bool) or not isinstance(self.folds, (int, np.integer)) or self.folds < 2:
                raise DsaError(f"folds must be an integer ≥ 2, got {self.folds!r}")
            unfitted_copy(self.prior)  # fail now, before any fitting, if the prior cannot be copied
        if self.name is None:
            base = getattr(self.prior, "name", None)
            self.name = f"EB-{base}" if base else "EB"

    @property
    def _is_method(self) -> bool:
        return hasattr(self.prior, "predict") and hasattr(self.prior, "fit")

    def _prior_predict(self, keys: np.ndarray, prior=None) -> np.ndarray:
        prior = self.prior if prior is None else prior
        fn: Callable = prior.predict if hasattr(prior, "predict") else prior
        p = np.asarray(fn(keys), dtype=float)
        k = self.train.n_options
        if p.shape != (len(keys), k):
            raise DsaError(f"the prior returned shape {p.shape}; expected ({len(keys)}, {k})")
        if not np.isfinite(p).all() or (p < 0).any():
            raise DsaError("the prior returned NaN, infinite or negative probabilities")
        s = p.sum(axis=1, keepdims=True)
        if (s <= 0).any():
            raise DsaError("the prior returned a row with no probability mass")
        p = np.maximum(p / s, self.prior_floor)
        return p / p.sum(axis=1, keepdims=True)

    def _scored_counts(self, train: SubgroupTable, context: dict) -> list[tuple[np.ndarray, np.ndarray]]:
        """(counts, prior) pairs whose Dirichlet-multinomial likelihood chooses α."""
        if self.concentration == "marginal":
            return [(np.asarray(train.counts, dtype=float), self._prior_predict(train.keys))]
        pairs, self.fold_priors_ = [], []
        for rest, fold in fold_tables(train, self.folds, self.seed):
            if rest.n_subgroups == 0:
                continue
            copy = unfitted_copy(self.prior).fit(rest, **context)
            self.fold_priors_.append(copy)
            pairs.append((np.asarray(fold.counts, dtype=float), self._prior_predict(fold.keys, copy)))
        return pairs

    def fit(self, train: SubgroupTable, **context) -> "EBShrinkage":
        _check_train(train)
        if self.concentration == "crossfit":
            fold_tables(train, self.folds, self.seed)  # input checks before any fitting
        if self._is_method and not self.prior_fitted:
            self.prior.fit(train, **context)
        self.train = train
        scored = self._scored_counts(train, context)
        lo, hi = (float(x) for x in self.alpha_bounds)

        def neg(log_alpha: float) -> float:
            a = float(np.exp(log_alpha))
            return -sum(dirichlet_multinomial_loglik(c, p, a) for c, p in scored)

        res = minimize_scalar(neg, bounds=(np.log(lo), np.log(hi)), method="bounded",
                              options={"xatol": 1e-6})
        log_a = float(res.x)
        # the bounded search never evaluates the end points themselves: compare them
        cands = [(neg(np.log(lo)), np.log(lo)), (float(res.fun), log_a), (neg(np.log(hi)), np.log(hi))]
        best_val, log_a = min(cands, key=lambda t: t[0])
        self.alpha_ = float(np.exp(log_a))
        tol = 1e-3
        self.alpha_at_bound_ = (
            "lower" if log_a <= np.log(lo) + tol else "upper" if log_a >= np.log(hi) - tol else None
        )
        self.loglik_ = -float(best_val)
        return self

    def predict(self, keys) -> np.ndarray:
        if self.alpha_ is None:
            raise DsaError("call fit() before predict()")
        keys = _check_keys(self.train, keys)
        prior = self._prior_predict(keys)
        counts, _ = self.train.lookup(keys)
        n = counts.sum(axis=1, keepdims=True)
        return (counts + self.alpha_ * prior) / (n + self.alpha_)

    def describe(self) -> dict:
        how = ("marginal likelihood of the training counts around the prior fitted on them"
               if self.concentration == "marginal" else
               f"cross-fitted: {self.folds} random folds of the respondents (seed {self.seed}), each scored "
               "around a copy of the prior fitted on the other folds; prediction shrinks the full counts toward "
               "the full-sample prior")
        return {
            "method": self.name,
            "model": "Dirichlet-multinomial posterior mean (x_g + alpha*prior_g)/(n_g + alpha)",
            "concentration": self.concentration,
            "alpha_estimator": how,
            "prior": getattr(self.prior, "name", repr(self.prior)),
            "prior_fitted_before": bool(self.prior_fitted or not self._is_method),
            "folds": self.folds if self.concentration == "crossfit" else None,
            "alpha": self.alpha_,
            "alpha_bounds": list(self.alpha_bounds),
            "alpha_at_bound": self.alpha_at_bound_,
        }
