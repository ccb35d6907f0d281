"""Empirical-Bayes Dirichlet-multinomial shrinkage toward any prior prediction.

Model: subgroup ``g``'s answer distribution ``θ_g ~ Dirichlet(α · π_g)``, where
``π_g`` is a *prior prediction* for ``g`` (from any method: the main-effects
logit, an LLM, ...), and the training counts ``x_g | θ_g ~ Multinomial(n_g, θ_g)``.
The prediction is the posterior mean::

    P̂(C | g) = (x_g + α π_g) / (n_g + α)

so ``α`` acts as a number of pseudo-respondents: small subgroups follow the
prior, large ones their own counts.  A subgroup absent from the training sample
(``n_g = 0``) gets the prior itself.

``α`` is estimated by maximising the Dirichlet-multinomial marginal likelihood
of the training counts over all training subgroups::

    log p(x | α) = Σ_g [ log Γ(α) - log Γ(n_g + α)
                         + Σ_c ( log Γ(x_gc + α π_gc) - log Γ(α π_gc) ) ] + const

with ``scipy.optimize.minimize_scalar`` over ``log α`` in ``alpha_bounds``.
An estimate at the upper bound means the counts are no noisier than sampling
noise around the prior (predict ≈ the prior); at the lower bound, the prior
explains little (predict ≈ the training sample).

**Empirical Bayes, and its subtlety.**  By default the prior method is fitted
on the *same* training counts that then enter the marginal likelihood.  The
prior therefore fits those counts better than it would fit fresh data, the
counts look less dispersed around it than they really are, and ``α`` tends to
be overestimated (too much shrinkage toward the prior).  With a flexible prior
that can memorise the counts this bias is large; for a low-dimensional prior
such as the main-effects logit it is small, which is why the standard
empirical-Bayes recipe uses it.  A prior fitted elsewhere (an LLM used
zero-shot, a model fitted on other data) has no such bias.

The prior can be

- a method instance that is not fitted yet: ``fit(train)`` fits it first
  (default: :class:`dsalib.statistical.MainEffectsLogit`, giving "EB-MNL");
- a method instance that is already fitted: pass ``prior_fitted=True`` and it
  is only asked to ``predict`` (e.g. an LLM method fitted by other code, for
  "LLM-informed shrinkage");
- a callable ``keys -> (G, K) probabilities`` (treated as fitted).

Prior probabilities are floored at ``prior_floor`` and renormalised, so an
option the prior rules out but a respondent chose does not make the
likelihood ``-inf``.
"""

from __future__ import annotations

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


@dataclass
class EBShrinkage:
    """EB shrinkage of each subgroup's training distribution toward a prior prediction.

    Parameters: ``prior`` (method, callable, or ``None`` for a
    :class:`~dsalib.statistical.MainEffectsLogit`), ``prior_fitted`` (do not
    call ``prior.fit``), ``alpha_bounds`` (search range for α), ``prior_floor``,
    ``name`` (default ``"EB-" + prior.name``).  After ``fit``: ``alpha_``
    (the estimate), ``alpha_at_bound_`` (``"lower"``, ``"upper"`` or ``None``),
    ``loglik_`` (the maximised marginal log-likelihood).
    """

    prior: Any = None
    prior_fitted: bool = False
    alpha_bounds: tuple[float, float] = (1e-2, 1e6)
    prior_floor: float = 1e-6
    name: str | None = None
    alpha_: float | None = field(default=None, init=False)
    alpha_at_bound_: str | None = field(default=None, init=False)
    loglik_: float | None = field(default=None, init=False)
    train: SubgroupTable | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.prior is None:
            from .statistical import MainEffectsLogit

            self.prior = MainEffectsLogit()
        is_method = hasattr(self.prior, "predict") and hasattr(self.prior, "fit")
        if not is_method and not callable(self.prior):
            raise DsaError("prior must be a method (with fit/predict) or a callable keys -> probabilities")
        lo, hi = (float(x) for x in self.alpha_bounds)
        if not (0 < lo < hi < np.inf):
            raise DsaError(f"alpha_bounds must be 0 < low < high < inf, got {self.alpha_bounds!r}")
        if not 0 <= self.prior_floor < 1:
            raise DsaError(f"prior_floor must lie in [0, 1), got {self.prior_floor!r}")
        if self.name is None:
            base = getattr(self.prior, "name", None)
            self.name = f"EB-{base}" if base else "EB"

    @property
    def _is_method(self) -> bool:
        return hasattr(self.prior, "predict") and hasattr(self.prior, "fit")

    def _prior_predict(self, keys: np.ndarray) -> np.ndarray:
        fn: Callable = self.prior.predict if self._is_method else self.prior
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

    def fit(self, train: SubgroupTable, **context) -> "EBShrinkage":
        _check_train(train)
        if self._is_method and not self.prior_fitted:
            self.prior.fit(train, **context)
        self.train = train
        prior = self._prior_predict(train.keys)
        counts = np.asarray(train.counts, dtype=float)
        lo, hi = (float(x) for x in self.alpha_bounds)

        def neg(log_alpha: float) -> float:
            return -dirichlet_multinomial_loglik(counts, prior, float(np.exp(log_alpha)))

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
        return {
            "method": self.name,
            "model": "Dirichlet-multinomial posterior mean (x_g + alpha*prior_g)/(n_g + alpha), "
                     "alpha by marginal likelihood (empirical Bayes, prior fitted on the same counts "
                     "unless prior_fitted)",
            "prior": getattr(self.prior, "name", repr(self.prior)),
            "prior_fitted_elsewhere": bool(self.prior_fitted or not self._is_method),
            "alpha": self.alpha_,
            "alpha_bounds": list(self.alpha_bounds),
            "alpha_at_bound": self.alpha_at_bound_,
        }
