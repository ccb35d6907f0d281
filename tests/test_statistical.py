"""Statistical baselines: main-effects multinomial logit and proportional-odds ordinal logit."""

import itertools
from dataclasses import replace

import numpy as np
import pytest

from dsalib import metrics
from dsalib.baselines import TrainingSample
from dsalib.errors import DsaError
from dsalib.statistical import MainEffectsLogit, OrdinalLogit, StackedLogit, one_hot
from dsalib.surveys import SubgroupTable

LEVELS = (2, 3, 3)
K = 5
SMALL_GRID = (0.01, 0.1, 1.0, 10.0)


def grid_keys(levels=LEVELS):
    return np.array(list(itertools.product(*[range(n) for n in levels])), dtype=np.int64)


def true_dist(seed, kind="mnl", levels=LEVELS, k=K, strength=1.0):
    """True P(C|b) on the full grid: factorised (main-effects logit) or proportional odds."""
    rng = np.random.default_rng(seed)
    keys = grid_keys(levels)
    if kind == "mnl":
        logit = np.tile(rng.normal(0, 0.5, k), (len(keys), 1))
        for j, n in enumerate(levels):
            phi = rng.normal(0, strength, (n, k))  # log φ_j(C, level)
            logit += phi[keys[:, j]]
        p = np.exp(logit - logit.max(axis=1, keepdims=True))
    else:
        beta = [np.concatenate(([0.0], rng.normal(0, strength, n - 1))) for n in levels]
        xb = sum(beta[j][keys[:, j]] for j in range(len(levels)))
        theta = np.sort(rng.normal(0, 1.5, k - 1))
        cum = 1 / (1 + np.exp(-(theta[None, :] - xb[:, None])))
        p = np.diff(np.concatenate((np.zeros((len(keys), 1)), cum, np.ones((len(keys), 1))), axis=1), axis=1)
    return keys, p / p.sum(axis=1, keepdims=True)


def sample_table(keys, p, n, seed, levels=LEVELS):
    """A SubgroupTable of n respondents: unequal subgroup sizes, answers from p."""
    rng = np.random.default_rng(seed + 1000)
    size_w = rng.dirichlet(np.full(len(keys), 2.0))
    sizes = rng.multinomial(n, size_w)
    counts = np.stack([rng.multinomial(s, pg) for s, pg in zip(sizes, p)]).astype(float)
    present = sizes > 0
    return SubgroupTable(
        dataset="synthetic", question="q",
        attributes=tuple(f"a{j}" for j in range(len(levels))),
        levels=tuple(tuple(f"v{i}" for i in range(n_)) for n_ in levels),
        keys=keys[present], counts=counts[present], n=sizes[present],
        option_labels=tuple(str(c) for c in range(p.shape[1])),
    )


def mean_jsd(method, keys, p):
    return float(metrics.jsd(method.predict(keys), p).mean())


def assert_distributions(pred, g, k=K):
    assert pred.shape == (g, k)
    assert np.isfinite(pred).all() and (pred >= 0).all()
    np.testing.assert_allclose(pred.sum(axis=1), 1.0, atol=1e-9)


# ---------------------------------------------------------------- accuracy on synthetic data


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mnl_beats_ts_on_factorised_data(seed):
    keys, p = true_dist(seed, "mnl")
    train = sample_table(keys, p, 300, seed)
    ts = TrainingSample().fit(train)
    mnl = MainEffectsLogit(Cs=SMALL_GRID, seed=seed).fit(train)
    assert mean_jsd(mnl, keys, p) < mean_jsd(ts, keys, p)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_polr_beats_ts_on_proportional_odds_data(seed):
    keys, p = true_dist(seed, "polr")
    train = sample_table(keys, p, 300, seed)
    ts = TrainingSample().fit(train)
    polr = OrdinalLogit().fit(train)
    assert polr.converged_
    assert mean_jsd(polr, keys, p) < mean_jsd(ts, keys, p)


def test_mnl_recovers_truth_with_much_data():
    keys, p = true_dist(5, "mnl")
    train = sample_table(keys, p, 20000, 5)
    mnl = MainEffectsLogit(Cs=(1.0, 100.0)).fit(train)
    assert mean_jsd(mnl, keys, p) < 0.005


def test_polr_recovers_truth_with_much_data():
    keys, p = true_dist(5, "polr")
    train = sample_table(keys, p, 20000, 5)
    assert mean_jsd(OrdinalLogit().fit(train), keys, p) < 0.003


# ---------------------------------------------------------------- agreement with the libraries


def _respondents(train):
    c = np.round(train.counts).astype(int)
    r, o = np.nonzero(c)
    return np.repeat(r, c[r, o]), np.repeat(o, c[r, o])


def test_mnl_cells_with_weights_equal_respondent_rows():
    from sklearn.linear_model import LogisticRegression

    keys, p = true_dist(3, "mnl")
    train = sample_table(keys, p, 400, 3)
    mnl = MainEffectsLogit(Cs=(0.5,), pseudo_count=0.0).fit(train)
    sub, y = _respondents(train)
    X = one_hot(train.keys, LEVELS)[sub]
    ref = LogisticRegression(C=0.5, max_iter=2000, tol=1e-8).fit(X, y)
    np.testing.assert_allclose(mnl.predict(keys), ref.predict_proba(one_hot(keys, LEVELS)), atol=2e-3)


def test_polr_weighted_cells_equal_orderedmodel_on_respondents():
    from statsmodels.miscmodels.ordinal_model import OrderedModel

    keys, p = true_dist(4, "polr")
    train = sample_table(keys, p, 400, 4)
    polr = OrdinalLogit(pseudo_count=0.0).fit(train)
    sub, y = _respondents(train)
    X = one_hot(train.keys, LEVELS, drop_first=True)[sub]
    ref = OrderedModel(y, X, distr="logit").fit(method="bfgs", maxiter=2000, disp=False)
    ref_pred = ref.model.predict(ref.params, exog=one_hot(keys, LEVELS, drop_first=True))
    np.testing.assert_allclose(polr.predict(keys), ref_pred, atol=1e-4)


# ---------------------------------------------------------------- interface and edge cases


@pytest.mark.parametrize("make", [lambda: MainEffectsLogit(Cs=SMALL_GRID), lambda: OrdinalLogit()])
def test_predictions_are_distributions_and_cover_absent_subgroups(make):
    keys, p = true_dist(0, "mnl")
    train = sample_table(keys, p, 60, 0)
    assert train.n_subgroups < len(keys)  # some subgroups have no respondent
    m = make().fit(train)
    pred = m.predict(keys)
    assert_distributions(pred, len(keys))
    assert m.predict(keys[:0]).shape == (0, K)


@pytest.mark.parametrize("make", [lambda: MainEffectsLogit(Cs=SMALL_GRID), lambda: OrdinalLogit()])
def test_unobserved_option_gets_small_positive_probability(make):
    keys, p = true_dist(1, "polr")
    train = sample_table(keys, p, 200, 1)
    train.counts[:, 2] = 0.0  # nobody chose the middle option
    pred = make().fit(train).predict(keys)
    assert_distributions(pred, len(keys))
    assert (pred[:, 2] > 0).all() and (pred[:, 2] < 0.05).all()


@pytest.mark.parametrize("cls", [MainEffectsLogit, OrdinalLogit])
def test_unobserved_option_without_pseudo_count_is_zero(cls):
    keys, p = true_dist(1, "polr")
    train = sample_table(keys, p, 200, 1)
    train.counts[:, 2] = 0.0
    kw = {"Cs": (1.0,)} if cls is MainEffectsLogit else {}
    pred = cls(pseudo_count=0.0, **kw).fit(train).predict(keys)
    assert_distributions(pred, len(keys))
    assert (pred[:, 2] == 0).all()


@pytest.mark.parametrize("make", [lambda: MainEffectsLogit(Cs=SMALL_GRID), lambda: OrdinalLogit()])
def test_level_absent_from_training_is_predicted(make):
    keys, p = true_dist(2, "mnl")
    train = sample_table(keys, p, 200, 2)
    train = train.subset(train.keys[:, 1] != 2)  # level 2 of attribute 1 never seen
    pred = make().fit(train).predict(keys)
    assert_distributions(pred, len(keys))


def test_mnl_is_deterministic_and_reports_cv():
    keys, p = true_dist(0, "mnl")
    train = sample_table(keys, p, 200, 0)
    a = MainEffectsLogit(Cs=SMALL_GRID, seed=7).fit(train)
    b = MainEffectsLogit(Cs=SMALL_GRID, seed=7).fit(train)
    np.testing.assert_array_equal(a.predict(keys), b.predict(keys))
    assert a.C_ in SMALL_GRID and set(a.cv_scores_) == set(SMALL_GRID)
    assert a.C_ == min(a.cv_scores_, key=a.cv_scores_.get)
    assert a.cv_unit_ == "respondents"
    assert a.describe()["C"] == a.C_


def test_mnl_cross_validation_in_parallel_processes_equals_one_process(monkeypatch):
    from dsalib import statistical

    keys, p = true_dist(0, "mnl")
    train = sample_table(keys, p, 200, 0)
    monkeypatch.setattr(statistical, "cv_jobs", lambda folds: 1)
    one = MainEffectsLogit(Cs=SMALL_GRID, seed=7).fit(train)
    monkeypatch.setattr(statistical, "cv_jobs", lambda folds: 2)
    two = MainEffectsLogit(Cs=SMALL_GRID, seed=7).fit(train)
    assert one.cv_scores_ == two.cv_scores_ and one.C_ == two.C_  # the same floats, not just close
    np.testing.assert_array_equal(one.predict(keys), two.predict(keys))


def test_mnl_weighted_counts_cross_validate_cells():
    keys, p = true_dist(0, "mnl")
    train = sample_table(keys, p, 200, 0)
    train.counts *= 1.37  # a weighted table
    m = MainEffectsLogit(Cs=SMALL_GRID).fit(train)
    assert m.cv_unit_.startswith("cells")
    assert_distributions(m.predict(keys), len(keys))


@pytest.mark.parametrize("make", [MainEffectsLogit, OrdinalLogit])
def test_empty_training_table_raises(make):
    keys, p = true_dist(0, "mnl")
    train = sample_table(keys, p, 100, 0)
    empty = train.subset(np.zeros(train.n_subgroups, dtype=bool))
    with pytest.raises(DsaError, match="no respondents"):
        make().fit(empty)


@pytest.mark.parametrize("make", [lambda: MainEffectsLogit(Cs=(1.0,)), OrdinalLogit])
def test_bad_keys_and_unfitted_raise(make):
    keys, p = true_dist(0, "mnl")
    train = sample_table(keys, p, 200, 0)
    with pytest.raises(DsaError, match="fit"):
        make().predict(keys)
    m = make().fit(train)
    with pytest.raises(DsaError, match="shape"):
        m.predict(keys[:, :2])
    with pytest.raises(DsaError, match="shape"):
        m.predict(keys[0])
    bad = keys.copy()
    bad[0, 2] = 3
    with pytest.raises(DsaError, match="outside"):
        m.predict(bad)


def test_bad_parameters_raise():
    keys, p = true_dist(0, "mnl")
    train = sample_table(keys, p, 200, 0)
    with pytest.raises(DsaError):
        MainEffectsLogit(Cs=(0.0, 1.0)).fit(train)
    with pytest.raises(DsaError):
        MainEffectsLogit(cv=1).fit(train)
    with pytest.raises(DsaError):
        OrdinalLogit(pseudo_count=-1).fit(train)


def test_single_option_without_pseudo_count_raises():
    keys, p = true_dist(0, "mnl")
    train = sample_table(keys, p, 100, 0)
    train.counts[:] = 0.0
    train.counts[:, 1] = train.n
    with pytest.raises(DsaError, match="single option"):
        OrdinalLogit(pseudo_count=0.0).fit(train)
    with pytest.raises(DsaError, match="single option"):
        MainEffectsLogit(Cs=(1.0,), pseudo_count=0.0).fit(train)


# ---------------------------------------------------------------- the stacked MNL


def shared_effects_tables(seed, n_target, n_other=600, tasks=4, levels=LEVELS, k=K):
    """Questions whose background effects are shared (plus small own deviations), different intercepts.

    Returns the target's true distributions and training table, and the other questions' tables.
    """
    rng = np.random.default_rng(seed)
    keys = grid_keys(levels)
    phi = [rng.normal(0, 1.0, (n, k)) for n in levels]
    truths, tables = [], []
    for t in range(tasks):
        logit = np.tile(rng.normal(0, 0.7, k), (len(keys), 1))
        for j, n in enumerate(levels):
            logit += (phi[j] + rng.normal(0, 0.15, (n, k)))[keys[:, j]]
        p = np.exp(logit - logit.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        table = sample_table(keys, p, n_target if t == 0 else n_other, seed + 17 * t, levels)
        truths.append(p)
        tables.append(replace(table, question=f"q{t}"))
    return keys, truths[0], tables[0], tables[1:]


def test_stacked_mnl_borrows_shared_effects_from_other_questions():
    errs = {"MNL": [], "Stacked": []}
    for seed in (0, 3):  # measured: stacked / MNL error 0.45, 0.47
        keys, p, train, others = shared_effects_tables(seed, n_target=120, tasks=3)
        mnl = MainEffectsLogit(Cs=(0.1, 1.0), cv=2, seed=seed).fit(train)
        stacked = StackedLogit(others=tuple(others), Cs=(0.1, 1.0), shares=(0.0, 2.0), cv=2, seed=seed).fit(train)
        assert stacked.stacked_ == ["q0", "q1", "q2"] and stacked.skipped_ == {}
        assert set(stacked.cv_scores_) == {(s, c) for s in (0.0, 2.0) for c in (0.1, 1.0)}
        assert stacked.share_ == 2.0  # cross-validation finds the sharing
        errs["MNL"].append(mean_jsd(mnl, keys, p))
        errs["Stacked"].append(mean_jsd(stacked, keys, p))
        np.testing.assert_allclose(stacked.predict(keys).sum(axis=1), 1.0)
    assert np.mean(errs["Stacked"]) < 0.8 * np.mean(errs["MNL"]), errs


def test_stacked_mnl_without_sharing_is_the_target_question_own_mnl():
    keys, p, train, others = shared_effects_tables(5, n_target=300)
    mnl = MainEffectsLogit(Cs=(1.0,)).fit(train)
    alone = StackedLogit(others=tuple(others), Cs=(1.0,), shares=(0.0,)).fit(train)
    # equal up to the other questions' lightly penalised intercept offsets and lbfgs tolerances (measured 1.6e-3)
    np.testing.assert_allclose(alone.predict(keys), mnl.predict(keys), atol=3e-3)
    shared = StackedLogit(others=tuple(others), Cs=(1.0,), shares=(2.0,)).fit(train)
    assert np.abs(shared.predict(keys) - mnl.predict(keys)).max() > 0.01


def test_stacked_mnl_on_gss2018():
    from dsalib import methods
    from dsalib.surveys import enhancement_split, load_survey

    survey = load_survey("gss2018")
    attrs = ("sex", "age", "race", "party")
    split = enhancement_split(survey, "natheal", 300, 0, "heldout", attrs)
    truth = split.truth.subset(split.truth.n >= 10)
    made = methods.make_method("Stacked-MNL", survey=survey, seed=4)
    assert isinstance(made, StackedLogit) and made.survey is survey and made.seed == 4
    # survey= stacks every other core question, tabulated on the target's background
    every = StackedLogit(survey=survey)._other_tables(split.train, None)
    assert sorted(t.question for t in every) == sorted(q for q in survey.core if q != "natheal")
    assert len(every) == 17 and all(t.attributes == attrs for t in every)
    others = tuple(t for t in every if t.question in ("natenvir", "nateduc", "natfare"))
    stacked = StackedLogit(others=others, Cs=(0.1,), shares=(1.0,)).fit(split.train)
    assert stacked.stacked_ == ["natheal", "natenvir", "nateduc", "natfare"]
    pred = stacked.predict(truth.keys)
    np.testing.assert_allclose(pred.sum(axis=1), 1.0)
    ts = TrainingSample().fit(split.train)
    assert metrics.jsd(pred, truth.dist).mean() < metrics.jsd(ts.predict(truth.keys), truth.dist).mean()
    assert stacked.describe()["share"] == 1.0


def test_stacked_mnl_bad_inputs():
    from dsalib import methods
    from dsalib.errors import ParameterError

    keys, p, train, others = shared_effects_tables(0, n_target=100, tasks=2)
    with pytest.raises(DsaError, match="needs the other questions"):
        StackedLogit().fit(train)
    with pytest.raises(ParameterError, match="survey="):
        methods.make_method("Stacked-MNL")
    wrong_k = replace(others[0], counts=others[0].counts[:, :3], option_labels=("a", "b", "c"), question="k3")
    with pytest.raises(DsaError, match="no other question with 5 options.*k3"):
        StackedLogit(others=(wrong_k,), Cs=(1.0,), shares=(1.0,)).fit(train)
    fitted = StackedLogit(others=(wrong_k, others[0]), Cs=(1.0,), shares=(1.0,)).fit(train)
    assert fitted.skipped_ == {"k3": "3 options, the target has 5"} and fitted.stacked_ == ["q0", "q1"]
    other_attrs = replace(others[0], attributes=("x", "a1", "a2"))
    with pytest.raises(DsaError, match="same background"):
        StackedLogit(others=(other_attrs,)).fit(train)
    with pytest.raises(DsaError, match="shares"):
        StackedLogit(others=tuple(others), shares=(-1.0,)).fit(train)
    with pytest.raises(DsaError, match="fit"):
        StackedLogit(others=tuple(others)).predict(keys)
