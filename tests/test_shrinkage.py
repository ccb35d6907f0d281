"""Empirical-Bayes Dirichlet-multinomial shrinkage (dsalib.shrinkage)."""

import dataclasses
import itertools

import numpy as np
import pytest
from scipy.stats import dirichlet_multinomial

from dsalib import metrics
from dsalib.baselines import TrainingSample
from dsalib.errors import DsaError
from dsalib.shrinkage import EBShrinkage, dirichlet_multinomial_loglik, fold_tables, unfitted_copy
from dsalib.statistical import MainEffectsLogit, OrdinalLogit
from dsalib.surveys import SubgroupTable

LEVELS = (2, 3, 3)
K = 5
SMALL_GRID = (0.01, 0.1, 1.0, 10.0)


def grid_keys():
    return np.array(list(itertools.product(*[range(n) for n in LEVELS])), dtype=np.int64)


def factorised(seed, strength=1.0):
    """True P(C|b) ∝ Π_k φ_k(C, b_k) on the full grid of LEVELS."""
    rng = np.random.default_rng(seed)
    keys = grid_keys()
    logit = np.tile(rng.normal(0, 0.5, K), (len(keys), 1))
    for j, n in enumerate(LEVELS):
        logit += rng.normal(0, strength, (n, K))[keys[:, j]]
    p = np.exp(logit - logit.max(axis=1, keepdims=True))
    return keys, p / p.sum(axis=1, keepdims=True)


def table_from(keys, p, sizes, seed):
    rng = np.random.default_rng(seed + 1000)
    counts = np.stack([rng.multinomial(s, pg) for s, pg in zip(sizes, p)]).astype(float)
    present = np.asarray(sizes) > 0
    return SubgroupTable(
        dataset="synthetic", question="q", attributes=("a0", "a1", "a2"),
        levels=tuple(tuple(f"v{i}" for i in range(n)) for n in LEVELS),
        keys=keys[present], counts=counts[present], n=np.asarray(sizes)[present],
        option_labels=tuple(str(c) for c in range(p.shape[1])),
    )


def sample_table(keys, p, n, seed):
    rng = np.random.default_rng(seed + 500)
    sizes = rng.multinomial(n, rng.dirichlet(np.full(len(keys), 2.0)))
    return table_from(keys, p, sizes, seed)


class Fixed:
    """A prior that is already fitted: a lookup of the true distributions."""

    name = "TRUE"

    def __init__(self, keys, p):
        self.map = {tuple(k): row for k, row in zip(keys.tolist(), p)}
        self.fit_calls = 0

    def fit(self, train, **context):
        self.fit_calls += 1
        raise AssertionError("a prior marked as fitted must not be refitted")

    def predict(self, keys):
        return np.stack([self.map[tuple(k)] for k in np.asarray(keys).tolist()])


# ---------------------------------------------------------------- the marginal likelihood


def test_loglik_matches_scipy_dirichlet_multinomial_up_to_a_constant():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 6, size=(6, 4)).astype(float)
    counts[0] = [0, 3, 0, 0]
    prior = rng.dirichlet(np.ones(4), size=6)
    ours = [dirichlet_multinomial_loglik(counts, prior, a) for a in (0.5, 3.0, 40.0)]
    ref = [sum(dirichlet_multinomial.logpmf(c, a * pr, c.sum()) for c, pr in zip(counts, prior))
           for a in (0.5, 3.0, 40.0)]
    np.testing.assert_allclose(np.diff(ours), np.diff(ref), rtol=1e-9, atol=1e-9)


def test_alpha_maximises_the_marginal_likelihood():
    keys, p = factorised(0)
    train = sample_table(keys, p, 400, 0)
    flat = lambda k: np.full((len(k), K), 1.0 / K)  # noqa: E731
    eb = EBShrinkage(prior=flat).fit(train)
    grid = np.exp(np.linspace(np.log(0.05), np.log(1e4), 400))
    ll = [dirichlet_multinomial_loglik(train.counts, np.full_like(train.counts, 1 / K), a) for a in grid]
    assert eb.loglik_ >= max(ll) - 1e-6
    assert eb.alpha_at_bound_ is None
    assert eb.alpha_ == pytest.approx(grid[int(np.argmax(ll))], rel=0.05)


# ---------------------------------------------------------------- predictions


def test_posterior_mean_formula_and_absent_subgroups_get_the_prior():
    keys, p = factorised(1)
    sizes = np.where(np.arange(len(keys)) % 4 == 0, 0, 15)
    train = table_from(keys, p, sizes, 1)
    prior = np.full((len(keys), K), 1.0 / K)
    eb = EBShrinkage(prior=lambda k: np.full((len(k), K), 1.0 / K), alpha_bounds=(7.0, 7.0 + 1e-9)).fit(train)
    assert eb.alpha_ == pytest.approx(7.0)
    counts, n = train.lookup(keys)
    expected = (counts + 7.0 * prior) / (n[:, None] + 7.0)
    pred = eb.predict(keys)
    np.testing.assert_allclose(pred, expected, rtol=1e-6)
    absent = sizes == 0
    np.testing.assert_allclose(pred[absent], prior[absent], rtol=1e-6)
    np.testing.assert_allclose(pred.sum(axis=1), 1.0)


def test_alpha_large_when_data_follow_the_prior_small_when_they_do_not():
    keys, p = factorised(2, strength=1.5)
    train = table_from(keys, p, np.full(len(keys), 200), 2)
    exact = EBShrinkage(prior=Fixed(keys, p), prior_fitted=True).fit(train)
    flat = EBShrinkage(prior=lambda k: np.full((len(k), K), 1.0 / K)).fit(train)
    assert exact.alpha_ > 200  # the prior outweighs each subgroup's 200 respondents
    assert flat.alpha_ < 20
    # with a flat prior and 200 respondents each, the prediction is close to the sample
    np.testing.assert_allclose(flat.predict(train.keys), train.dist, atol=0.05)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eb_mnl_beats_ts_on_factorised_data(seed):
    keys, p = factorised(seed)
    train = sample_table(keys, p, 300, seed)
    ts = TrainingSample().fit(train)
    eb = EBShrinkage(prior=MainEffectsLogit(Cs=SMALL_GRID, seed=seed)).fit(train)
    assert eb.name == "EB-MNL"
    err = lambda m: metrics.jsd(m.predict(keys), p).mean()  # noqa: E731
    assert err(eb) < err(ts)
    pred = eb.predict(keys)
    assert np.isfinite(pred).all() and (pred >= 0).all()
    np.testing.assert_allclose(pred.sum(axis=1), 1.0)


def test_eb_with_flat_prior_beats_ts_when_subgroups_are_small():
    keys, p = factorised(3, strength=0.4)
    train = sample_table(keys, p, 150, 3)
    ts = TrainingSample().fit(train)
    eb = EBShrinkage(prior=lambda k: np.tile(train.marginal, (len(k), 1))).fit(train)
    err = lambda m: metrics.jsd(m.predict(keys), p).mean()  # noqa: E731
    assert err(eb) < err(ts)


# ---------------------------------------------------------------- the prior


def test_default_prior_is_the_main_effects_logit():
    eb = EBShrinkage()
    assert isinstance(eb.prior, MainEffectsLogit) and eb.name == "EB-MNL"
    assert EBShrinkage(prior=OrdinalLogit()).name == "EB-POLR"
    assert EBShrinkage(prior=lambda k: k).name == "EB"
    assert EBShrinkage(name="mine").name == "mine"


def test_unfitted_prior_is_fitted_and_fitted_prior_is_not():
    keys, p = factorised(4)
    train = sample_table(keys, p, 200, 4)
    polr = OrdinalLogit()
    eb = EBShrinkage(prior=polr).fit(train)
    assert polr.result_ is not None and eb.alpha_ > 0
    fixed = Fixed(keys, p)
    EBShrinkage(prior=fixed, prior_fitted=True).fit(train)
    assert fixed.fit_calls == 0
    # an already fitted method passed with prior_fitted keeps its own fit
    other = sample_table(keys, p, 200, 9)
    mnl = MainEffectsLogit(Cs=(1.0,)).fit(other)
    before = mnl.predict(keys)
    EBShrinkage(prior=mnl, prior_fitted=True).fit(train)
    np.testing.assert_array_equal(mnl.predict(keys), before)


def test_prior_that_rules_out_an_observed_option_is_floored():
    keys, p = factorised(5)
    train = sample_table(keys, p, 200, 5)

    def zero_on_first(k):
        out = np.full((len(k), K), 1.0 / (K - 1))
        out[:, 0] = 0.0
        return out

    eb = EBShrinkage(prior=zero_on_first).fit(train)
    assert np.isfinite(eb.loglik_) and eb.alpha_ > 0
    pred = eb.predict(keys)
    assert np.isfinite(pred).all()
    np.testing.assert_allclose(pred.sum(axis=1), 1.0)


def test_bad_inputs_raise():
    keys, p = factorised(0)
    train = sample_table(keys, p, 200, 0)
    with pytest.raises(DsaError, match="prior"):
        EBShrinkage(prior=42)
    with pytest.raises(DsaError, match="alpha_bounds"):
        EBShrinkage(alpha_bounds=(5.0, 1.0))
    with pytest.raises(DsaError, match="shape"):
        EBShrinkage(prior=lambda k: np.full((len(k), K + 1), 1.0 / (K + 1))).fit(train)
    with pytest.raises(DsaError, match="negative"):
        EBShrinkage(prior=lambda k: np.full((len(k), K), -1.0)).fit(train)
    with pytest.raises(DsaError, match="fit"):
        EBShrinkage().predict(keys)
    empty = train.subset(np.zeros(train.n_subgroups, dtype=bool))
    with pytest.raises(DsaError, match="no respondents"):
        EBShrinkage().fit(empty)
    eb = EBShrinkage(prior=lambda k: np.full((len(k), K), 1.0 / K)).fit(train)
    with pytest.raises(DsaError, match="shape"):
        eb.predict(keys[:, :1])


# ---------------------------------------------------------------- the cross-fitted concentration


class CountingLogit(MainEffectsLogit):
    """An MNL that records every table it is fitted on (class-wide, so copies count too)."""

    fitted_on: list = []

    def fit(self, train, **context):
        CountingLogit.fitted_on.append(train)
        return super().fit(train, **context)


def interacting(seed):
    """A truth with strong interactions on many small cells (a main-effects prior misses them)."""
    levels = (3, 3, 4, 4)
    keys = np.array(list(itertools.product(*[range(n) for n in levels])), dtype=np.int64)
    rng = np.random.default_rng(seed)
    logit = rng.normal(0, 1.2, (len(keys), K))
    p = np.exp(logit - logit.max(axis=1, keepdims=True))
    return keys, p / p.sum(axis=1, keepdims=True), levels


def table_on(keys, p, levels, sizes, seed):
    rng = np.random.default_rng(seed + 2000)
    counts = np.stack([rng.multinomial(s, pg) for s, pg in zip(sizes, p)]).astype(float)
    present = np.asarray(sizes) > 0
    return SubgroupTable(
        dataset="synthetic", question="q", attributes=tuple(f"a{j}" for j in range(len(levels))),
        levels=tuple(tuple(f"v{i}" for i in range(n)) for n in levels),
        keys=keys[present], counts=counts[present], n=np.asarray(sizes)[present],
        option_labels=tuple(str(c) for c in range(K)),
    )


def test_fold_tables_partition_the_respondents_in_equal_folds():
    keys, p = factorised(6)
    train = sample_table(keys, p, 301, 6)
    parts = fold_tables(train, 3, seed=4)
    assert len(parts) == 3
    sizes = [fold.n_respondents for _, fold in parts]
    assert sum(sizes) == 301 and max(sizes) - min(sizes) <= 1
    total = np.zeros_like(train.counts)
    for rest, fold in parts:
        assert rest.n_respondents + fold.n_respondents == 301
        for tab in (rest, fold):
            assert (tab.n > 0).all() and (tab.counts.sum(axis=1) == tab.n).all()
        c, _ = fold.lookup(train.keys)
        total += c
        r, _ = rest.lookup(train.keys)
        np.testing.assert_array_equal(r + c, train.counts)
    np.testing.assert_array_equal(total, train.counts)  # every respondent in exactly one fold
    again = fold_tables(train, 3, seed=4)
    np.testing.assert_array_equal(again[0][1].counts, parts[0][1].counts)
    other = fold_tables(train, 3, seed=5)
    assert not np.array_equal(other[0][1].lookup(train.keys)[0], parts[0][1].lookup(train.keys)[0])


def test_crossfit_alpha_maximises_the_held_out_fold_likelihood():
    keys, p, levels = interacting(0)
    train = table_on(keys, p, levels, np.full(len(keys), 6), 0)
    eb = EBShrinkage(prior=MainEffectsLogit(Cs=(1.0,)), concentration="crossfit", folds=2, seed=3).fit(train)
    assert len(eb.fold_priors_) == 2
    pairs = []
    for (rest, fold), prior in zip(fold_tables(train, 2, 3), eb.fold_priors_):
        np.testing.assert_array_equal(prior.train.counts, rest.counts)  # each copy saw only the other fold
        pairs.append((fold.counts, eb._prior_predict(fold.keys, prior)))
    grid = np.exp(np.linspace(np.log(0.05), np.log(1e5), 500))
    ll = [sum(dirichlet_multinomial_loglik(c, pr, a) for c, pr in pairs) for a in grid]
    assert eb.loglik_ >= max(ll) - 1e-6
    assert eb.alpha_ == pytest.approx(grid[int(np.argmax(ll))], rel=0.05)
    # the prediction shrinks the full counts toward the full-sample prior
    counts, n = train.lookup(keys)
    expected = (counts + eb.alpha_ * eb._prior_predict(keys)) / (n[:, None] + eb.alpha_)
    np.testing.assert_allclose(eb.predict(keys), expected, rtol=1e-9)


def test_crossfit_shrinks_less_than_the_marginal_estimate_on_sparse_interacting_data():
    # many cells, ~2 respondents each, truth far from main effects: the same-sample prior fits the
    # counts closely, so the marginal estimate overstates alpha; the cross-fit does not
    keys, p, levels = interacting(1)
    rng = np.random.default_rng(1)
    train = table_on(keys, p, levels, rng.poisson(2.0, len(keys)), 1)
    kw = dict(prior=MainEffectsLogit(Cs=(10.0,)), seed=0)
    marginal = EBShrinkage(concentration="marginal", **kw).fit(train)
    cross = EBShrinkage(concentration="crossfit", **kw).fit(train)
    assert cross.alpha_ < marginal.alpha_ / 2
    err = lambda m: metrics.jsd(m.predict(keys), p).mean()  # noqa: E731
    assert err(cross) < err(marginal)


@pytest.mark.parametrize("concentration,fits", [("marginal", 0), ("crossfit", 2)])
def test_a_fitted_prior_is_reused_not_refitted(concentration, fits):
    from dsalib.methods import make_method

    keys, p = factorised(7)
    train = sample_table(keys, p, 300, 7)
    mnl = CountingLogit(Cs=SMALL_GRID).fit(train)
    before = mnl.predict(keys)
    CountingLogit.fitted_on = []
    eb = make_method("EB-MNL", prior=mnl, concentration=concentration, seed=2)
    assert eb.prior is mnl and eb.name == "EB-MNL" and eb.concentration == concentration
    eb.fit(train)
    # the full-sample prior is never refitted; the cross-fit fits one copy per fold, on part of the sample
    assert len(CountingLogit.fitted_on) == fits
    assert all(t.n_respondents < train.n_respondents for t in CountingLogit.fitted_on)
    np.testing.assert_array_equal(mnl.predict(keys), before)
    assert eb.describe()["prior_fitted_before"] is True


def test_make_method_fits_its_own_prior_without_one():
    from dsalib.methods import EB_CONCENTRATION, make_method

    keys, p = factorised(8)
    train = sample_table(keys, p, 200, 8)
    eb = make_method("EB-MNL", seed=3)
    assert eb.concentration == EB_CONCENTRATION and eb.prior.seed == 3
    eb.fit(train)
    assert eb.prior.model_ is not None and eb.alpha_ > 0


def test_unfitted_copy_keeps_settings_and_drops_fitted_state():
    keys, p = factorised(9)
    train = sample_table(keys, p, 200, 9)
    mnl = MainEffectsLogit(Cs=(0.5, 2.0), cv=3, seed=11).fit(train)
    copy = unfitted_copy(mnl)
    assert type(copy) is MainEffectsLogit and copy is not mnl
    assert (copy.Cs, copy.cv, copy.seed) == ((0.5, 2.0), 3, 11)
    assert copy.model_ is None and copy.train is None and copy.C_ is None


def test_crossfit_bad_inputs_raise_before_fitting():
    from dsalib.errors import ParameterError
    from dsalib.methods import make_method

    keys, p = factorised(0)
    train = sample_table(keys, p, 200, 0)
    with pytest.raises(DsaError, match="concentration must be one of"):
        EBShrinkage(concentration="bayes")
    with pytest.raises(ParameterError, match="concentration must be one of"):
        make_method("EB-MNL", concentration="bayes")
    with pytest.raises(DsaError, match="callable prior.*marginal"):
        EBShrinkage(prior=lambda k: np.full((len(k), K), 1.0 / K), concentration="crossfit")
    with pytest.raises(DsaError, match="folds must be an integer"):
        EBShrinkage(concentration="crossfit", folds=1)

    class NotCopyable:
        name = "X"

        def fit(self, train, **context):
            return self

        def predict(self, k):
            return np.full((len(k), K), 1.0 / K)

    with pytest.raises(DsaError, match="unfitted_copy"):
        EBShrinkage(prior=NotCopyable(), concentration="crossfit")
    prior = CountingLogit()
    CountingLogit.fitted_on = []
    weighted = dataclasses.replace(train, counts=train.counts * 0.5, weighted=True)
    with pytest.raises(DsaError, match="integer count"):
        EBShrinkage(prior=prior, concentration="crossfit").fit(weighted)
    assert CountingLogit.fitted_on == []  # refused before any fit
    with pytest.raises(ParameterError, match="needs a fitted MNL"):
        make_method("EB-MNL", prior=OrdinalLogit())
