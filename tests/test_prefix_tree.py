"""Sharing prompt openings in the frozen-prefix pass: the plan (property tests) and the engine."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dsalib.engine import EngineError, OptionModel
from dsalib.lm import OptionRule, build_tiny_model, option_probs
from dsalib.prefix_tree import plan_cost, plan_prefix_tree

RULE = OptionRule.letters(5)

# token sequences over a small alphabet, so that openings repeat
seq_lists = st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=12), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(seq_lists, st.integers(1, 20))
def test_plan_covers_every_prompt_once_below_a_proper_prefix(raw, min_saving):
    seqs = {i: tuple(s) for i, s in enumerate(raw)}
    plan = plan_prefix_tree(seqs, min_saving)
    seen = []
    for node, path in _paths(plan):
        for r in node.leaves:
            assert seqs[r][: node.end] == path and len(seqs[r]) > node.end  # the answer token is its own
            seen.append(r)
        if node.tokens:
            assert len(node.leaves) + len(node.children) >= 1
    assert sorted(seen) == sorted(seqs)
    assert plan_cost(plan, seqs) <= sum(len(s) for s in seqs.values())


def _paths(node, path=()):
    path = path + node.tokens
    assert len(path) == node.end
    yield node, path
    for child in node.children:
        yield from _paths(child, path)


def test_plan_shares_the_longest_openings():
    common = tuple(range(100, 140))  # 40 shared tokens
    seqs = {0: common + (1, 2), 1: common + (1, 3), 2: common + (4,), 3: (7, 8)}
    plan = plan_prefix_tree(seqs, min_saving=8)
    assert plan.leaves == [3]
    (top,) = plan.children
    # (1,) is shared by two prompts but saves one position, below min_saving: not a node of its own
    assert top.tokens == common and sorted(top.leaves) == [0, 1, 2] and top.children == []
    assert plan_cost(plan, seqs) == 40 + (2 + 2 + 1) + 2
    fine = plan_prefix_tree(seqs, min_saving=1)
    (inner,) = fine.children[0].children
    assert inner.tokens == (1,) and sorted(inner.leaves) == [0, 1]
    assert plan_cost(fine, seqs) == 40 + 1 + (1 + 1) + 1 + 2
    assert plan_cost(plan_prefix_tree(seqs, min_saving=1000), seqs) == sum(map(len, seqs.values()))


def test_plan_depth_is_bounded():
    from dsalib.prefix_tree import MAX_LEVELS

    base = tuple(range(1000, 1400))
    seqs = {i: base[:i] + (i,) for i in range(1, 400)}  # each prompt leaves the common text one token later
    plan = plan_prefix_tree(seqs, min_saving=1)  # a chain of 400 openings would be 400 nested levels
    assert len(list(plan.walk())) > 1
    assert max(_level(plan)) <= MAX_LEVELS
    assert sorted(r for n in plan.walk() for r in n.leaves) == sorted(seqs)


def _level(node, level=0):
    yield level
    for child in node.children:
        yield from _level(child, level + 1)


def test_plan_rejects_bad_input():
    with pytest.raises(ValueError, match="no tokens"):
        plan_prefix_tree({0: ()})
    with pytest.raises(ValueError, match="min_saving"):
        plan_prefix_tree({0: (1,)}, min_saving=0)


def shared_prompts():
    """Prompts like the study's: a long shared background block, then differing questions."""
    out = []
    for who in ("a woman aged 30", "a man aged 50"):
        for region in ("North", "South"):
            background = (f"Background: the respondent is {who}. " * 3 + f"They live in the {region}. ")
            for q in ("Do you trust people?", "Are you happy?", "Is the economy good for you?"):
                out.append(background + f"Question: {q}\nAnswer:")
    return out


FAMILIES = {
    "llama": dict(family="llama"),
    "gemma3-sliding": dict(family="gemma3", attn_implementation="eager", sliding_window=8,
                           layer_types=["full_attention", "sliding_attention", "sliding_attention"]),
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_shared_openings_give_the_unshared_predictions(name, one_torch_thread):
    model, tok = build_tiny_model(seed=0, **FAMILIES[name])
    prompts = shared_prompts()
    reference = option_probs(model, tok, prompts, RULE).probs
    shared = OptionModel(model, tok, RULE, share_min_tokens=4, prefix_batch_size=2).prepare(prompts)
    assert shared.prefix_shared_passes >= 2  # the background blocks were run once each
    plain = OptionModel(model, tok, RULE, share_prefix=False).prepare(prompts)
    assert plain.prefix_shared_passes == 0
    assert np.abs(shared.predict().numpy() - reference).max() <= 1e-5
    # the cached last-block inputs agree position by position (float rounding only)
    for i in range(len(prompts)):
        a, b = shared._entries_for([i])[0], plain._entries_for([i])[0]
        assert a.shape == b.shape
        assert float((a - b).abs().max()) <= 1e-4 * max(1.0, float(b.abs().max()))


def test_a_wrong_or_failing_shared_pass_falls_back_to_the_unshared_pass(monkeypatch, one_torch_thread):
    model, tok = build_tiny_model(seed=0)
    prompts = shared_prompts()
    reference = option_probs(model, tok, prompts, RULE).probs
    om = OptionModel(model, tok, RULE, share_min_tokens=4)
    real = om._prefix_pass

    def shifted(input_ids, mask, position_ids, past=None, use_cache=False):
        if past is not None:  # a bug in the positions of the rest of the prompt
            position_ids = position_ids + 3
        return real(input_ids, mask, position_ids, past, use_cache)

    monkeypatch.setattr(om, "_prefix_pass", shifted)
    with pytest.warns(UserWarning, match="disagrees with running it whole.*share_prefix=False"):
        om.prepare(prompts)
    assert om.share_prefix is False  # never a wrong answer: the unshared pass computed every prompt
    assert np.abs(om.predict().numpy() - reference).max() <= 1e-5

    # a cache this transformers version cannot continue from: the same fallback
    om = OptionModel(model, tok, RULE, share_min_tokens=4)

    def broken(input_ids, mask, position_ids, past=None, use_cache=False):
        if past is not None:
            raise ValueError("this cache cannot be continued")
        return real(input_ids, mask, position_ids, past, use_cache)

    monkeypatch.setattr(om, "_prefix_pass", broken)
    with pytest.warns(UserWarning, match="ValueError: this cache cannot be continued"):
        om.prepare(prompts)
    assert np.abs(om.predict().numpy() - reference).max() <= 1e-5


def test_share_min_tokens_is_checked():
    model, tok = build_tiny_model(seed=0)
    with pytest.raises(EngineError, match="share_min_tokens"):
        OptionModel(model, tok, RULE, share_min_tokens=0)


def test_warming_the_prefix_computes_each_prompt_once_for_every_method(ess9):
    from dsalib import llm_methods as L, surveys

    lm = L.LanguageModel.load("tiny")
    cold = L.LanguageModel.load("tiny")
    questions = ["imbgeco", "imueclt"]
    tables = {q: surveys.subgroup_table(ess9, q) for q in questions}
    prompts = {(q, t): lm.build_prompts(ess9, q, tables[q].keys, tables[q].attributes, t)
               for q in questions for t in ("default", "persona")}
    every = [p for ps in prompts.values() for p in ps]
    assert lm.warm_prefix(every, 11) == len(set(every))
    assert lm.warm_prefix(every, 11) == 0  # all cached now
    computed = sum(om.prefix_computed for om, _ in lm._option_models.values())
    shared = sum(om.prefix_shared_passes for om, _ in lm._option_models.values())
    assert shared > 0  # the subgroups' background blocks were shared across questions and templates
    for (q, t), ps in prompts.items():
        warm = lm.zero_shot_probs(ps, 11)
        assert np.abs(warm - cold.zero_shot_probs(ps, 11)).max() <= 1e-5
    # the methods' own passes found every prompt in the cache shared by the option models
    assert sum(om.prefix_computed for om, _ in lm._option_models.values()) == computed


def test_predictions_are_memoised_per_prompt(ess9):
    from dsalib import llm_methods as L, surveys
    from dsalib.train import Phase1Config

    lm = L.LanguageModel.load("tiny")
    split = surveys.enhancement_split(ess9, "imbgeco", 200, 0)
    tk = L.tkft(lm, ess9, phase1_config=Phase1Config(epochs=1, seed=0)).fit(split.train)
    keys = split.truth.keys[:5]
    first = tk.predict(keys)
    real, lm.option_model = lm.option_model, None  # predicting the same prompts again must not touch the model
    assert np.array_equal(tk.predict(keys[::-1]), first[::-1])
    lm.option_model = real
    d = L.Direct(lm, ess9).fit(split.train)
    first = d.predict(keys)
    lm.option_model = None
    assert np.array_equal(d.predict(keys[::-1]), first[::-1])
