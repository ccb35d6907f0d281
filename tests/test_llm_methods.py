import numpy as np
import pytest
import torch

from dsalib import baselines, llm_methods as L, metrics, surveys
from dsalib.errors import DsaError
from dsalib.train import Phase1Config, Phase2Config, run_phase2

from . import synthetic


@pytest.fixture(scope="module")
def tiny():
    return L.LanguageModel.load("tiny")


@pytest.fixture(scope="module")
def synth():
    return synthetic.survey(n=3000, seed=0)


def _truth_error(pred, keys, truth):
    true = np.stack([truth[tuple(k)] for k in keys])
    return float(metrics.jsd(pred, true).mean())


def test_direct_and_pe_return_distributions(tiny, ess9):
    split = surveys.enhancement_split(ess9, "imbgeco", 200, 0)
    for m in (L.Direct(tiny, ess9), L.persona(tiny, ess9)):
        p = m.fit(split.train).predict(split.truth.keys[:6])
        assert p.shape == (6, 11) and np.allclose(p.sum(axis=1), 1)
    mass = L.Direct(tiny, ess9).fit(split.train).option_mass(split.truth.keys[:3])
    assert ((mass > 0) & (mass <= 1)).all()
    # PE reads the persona prompt, so its predictions differ from Direct's
    d = L.Direct(tiny, ess9).fit(split.train).predict(split.truth.keys[:3])
    pe = L.persona(tiny, ess9).fit(split.train).predict(split.truth.keys[:3])
    assert not np.allclose(d, pe)


def test_tkft_and_dsa_beat_ts_on_factorised_data(tiny, synth):
    survey, truth = synth
    table = surveys.subgroup_table(survey, "q")
    rows = surveys.sample_respondents(survey, "q", 120, seed=2)
    train = surveys.subgroup_table(survey, "q", respondents=rows)
    keys = surveys.all_subgroups(train)
    ts = _truth_error(baselines.TrainingSample().fit(train).predict(keys), keys, truth)
    cfg1 = Phase1Config(lr=5e-3, max_epochs=10, patience=3, seed=0)
    tk = L.tkft(tiny, survey, phase1_config=cfg1).fit(train)
    ds = L.dsa(tiny, survey, phase1_config=cfg1, phase2_config=Phase2Config(lr=5e-3, min_pair_size=3, epochs=2)).fit(train)
    e_tk = _truth_error(tk.predict(keys), keys, truth)
    e_ds = _truth_error(ds.predict(keys), keys, truth)
    assert e_tk < ts and e_ds < ts, (e_tk, e_ds, ts)
    # Phase 2 ran on the fit/validation split; the guard decides whether it is kept
    assert ds.report["selection"]["phase2"]["pairs"] > 0 and ds.report["selection"]["phase2"]["steps"] > 0
    p2 = ds.report["phase2"]
    assert p2["outcome"] in L.PHASE2_OUTCOMES and "kept" not in p2 and "phase2_kept" not in ds.report
    assert p2["val_ce_before"] == ds.report["selection"]["phase2"]["val_ce_before"]
    rejected = p2["val_ce_after"] > p2["val_ce_before"] + 1e-6
    assert (p2["outcome"] == "rejected") == rejected and (p2["steps"] > 0) == (not rejected)
    assert tk.report["selection"]["phase1_epochs"] >= 1
    assert table.n_subgroups == 18


def test_fit_leaves_the_shared_model_untouched(tiny, ess9):
    split = surveys.enhancement_split(ess9, "imbgeco", 200, 0)
    before = L.Direct(tiny, ess9).fit(split.train).predict(split.truth.keys[:4])
    om, initial = tiny.option_model(11)
    m = L.tkft(tiny, ess9, phase1_config=Phase1Config(lr=1e-2, epochs=2)).fit(split.train)
    after_state = om.state_dict()
    assert all(torch.equal(after_state[k], initial[k]) for k in initial)
    tiny._probs_cache.clear()
    again = L.Direct(tiny, ess9).fit(split.train).predict(split.truth.keys[:4])
    assert np.allclose(before, again, atol=1e-6)
    assert not np.allclose(m.predict(split.truth.keys[:4]), before, atol=1e-3)


class _Spy:
    """Wraps an OptionModel and records which prompt rows were read with gradients."""

    def __init__(self, om):
        self.om, self.grad_rows, self.nograd_rows = om, set(), set()

    def probs(self, idx, grad=True):
        rows = set(torch.as_tensor(idx).tolist())
        (self.grad_rows if grad else self.nograd_rows).update(rows)
        return self.om.probs(idx, grad=grad)

    def __getattr__(self, name):
        return getattr(self.om, name)


def test_phase2_sends_no_gradient_through_the_reference(tiny, synth):
    survey, _ = synth
    rows = surveys.sample_respondents(survey, "q", 600, seed=2)
    train = surveys.subgroup_table(survey, "q", respondents=rows)
    om, initial = tiny.option_model(synthetic.K)
    om.load_state_dict(initial)
    m = L.Direct(tiny, survey).fit(train)
    om.prepare(m._prompts(train.keys))
    lookup = {tuple(k): i for i, k in enumerate(train.keys.tolist())}
    index = lambda keys: np.array([lookup[tuple(k)] for k in np.asarray(keys).tolist()])
    spy = _Spy(om)
    rep = run_phase2(spy, train, index, Phase2Config(lr=1e-2, min_pair_size=5))
    pairs = surveys.hamming1_pairs(train, 5)
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    larger = np.where(train.n[a] >= train.n[b], a, b)
    smaller = np.where(train.n[a] >= train.n[b], b, a)
    # gradients flowed only through the smaller subgroup of each pair
    assert spy.grad_rows == set(smaller.tolist())
    assert set(larger.tolist()) <= spy.nograd_rows
    only_reference = set(larger.tolist()) - set(smaller.tolist())
    assert only_reference  # some subgroups are only ever references
    assert rep.steps > 0 and rep.pairs == len(pairs) and rep.attribute_changes > 0
    changed = om.state_dict()
    assert any(not torch.equal(changed[k], initial[k]) for k in initial)
    om.load_state_dict(initial)


def test_phase2_without_pairs_says_so(tiny, ess9):
    split = surveys.enhancement_split(ess9, "imbgeco", 100, 0)
    m = L.dsa(tiny, ess9, phase1_config=Phase1Config(lr=1e-3, epochs=1),
              phase2_config=Phase2Config(min_pair_size=1000)).fit(split.train)
    assert m.report["phase2"]["pairs"] == 0 and m.report["phase2"]["outcome"] == "skipped"
    assert "no pair of training subgroups" in m.report["phase2"]["note"]


def test_aae_fits_and_predicts(tiny, ess9):
    split = surveys.enhancement_split(ess9, "lrscale", 300, 0)
    p = L.AAE(tiny, ess9).fit(split.train).predict(split.truth.keys)
    assert np.allclose(p.sum(axis=1), 1) and (p >= 0).all()


def test_bad_input(tiny, ess9):
    split = surveys.enhancement_split(ess9, "imbgeco", 30, 0)
    with pytest.raises(DsaError, match="call fit"):
        L.Direct(tiny, ess9).predict(split.truth.keys)
    with pytest.raises(DsaError, match="too small to hold out"):
        L.tkft(tiny, ess9, phase1_config=Phase1Config(val_fraction=0.001)).fit(split.train)
    with pytest.raises(DsaError, match="KL direction"):
        L.tkft(tiny, ess9, phase1_config=Phase1Config(direction="sideways", epochs=1)).fit(split.train)
    other = surveys.load_survey("ess10no")
    with pytest.raises(DsaError, match="training table is from"):
        L.Direct(tiny, other).fit(split.train)


def test_chat_template_option_wraps_every_prompt(ess9):
    """LanguageModel(chat_template=True): Direct and TKFT read the answer after the chat template's assistant turn."""
    from dsalib import lm as lm_mod, surveys
    from dsalib.llm_methods import LanguageModel
    from dsalib.methods import make_method

    model, tok = lm_mod.build_tiny_model()
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    plain = LanguageModel(name="tiny", model=model, tokenizer=tok)
    chat = LanguageModel(name="tiny", model=model, tokenizer=tok, chat_template=True)
    split = surveys.enhancement_split(ess9, "imbgeco", n=150, seed=0, mode="full")
    keys = split.truth.keys[:5]
    ps = chat.build_prompts(ess9, "imbgeco", keys, split.train.attributes)
    assert all(p.startswith("<|user|>\n") and p.endswith("<|assistant|>\nAnswer:") for p in ps)
    assert plain.build_prompts(ess9, "imbgeco", keys, split.train.attributes)[0].startswith("The following")
    p_plain = make_method("Direct", lm=plain, survey=ess9).fit(split.train).predict(keys)
    p_chat = make_method("Direct", lm=chat, survey=ess9).fit(split.train).predict(keys)
    assert p_chat.shape == p_plain.shape and np.abs(p_chat - p_plain).max() > 1e-4  # other prompts, other answers
    assert chat.describe()["chat_template"] is True


def test_memoised_computes_each_missing_key_once_in_first_seen_order():
    from dsalib.errors import DsaError
    from dsalib.llm_methods import memoised

    calls = []

    def compute(missing):
        calls.append(list(missing))
        return [k.upper() for k in missing]

    memo = {"a": "kept"}
    assert memoised(memo, ["b", "a", "c", "b"], compute) == ["B", "kept", "C", "B"]
    assert calls == [["b", "c"]]
    assert memoised(memo, ["c", "b"], compute) == ["C", "B"] and len(calls) == 1  # nothing left to compute
    with pytest.raises(DsaError, match="returned 1 values for 2 keys"):
        memoised({}, ["x", "y"], lambda missing: ["X"])
