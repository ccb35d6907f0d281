"""Tests for dsalib.engine on tiny models built from configs (no download)."""

import copy

import numpy as np
import pytest
import torch

from dsalib.engine import EngineError, OptionModel, TrainResult, block_at_last_position, train_loop
from dsalib.lm import NonFiniteLogitsError, OptionRule, build_tiny_model, option_probs

RULE = OptionRule.letters(5)
N = 12


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_prompts(n=N):
    return [
        f"Respondent {i}: age {20 + 5 * i}, region {'NSEW'[i % 4]}. " * (1 + i % 4)
        + "Question: How much do you agree?\nAnswer:"
        for i in range(n)
    ]


TARGETS = torch.softmax(2 * torch.randn(N, 5, generator=torch.Generator().manual_seed(1)), -1)
BATCHES = [list(range(s, s + 4)) for s in range(0, N, 4)]


def kl_loss(om, items):
    """Sum over items of KL(target || model) / batch size: additive over items."""
    idx = torch.tensor(items)
    t = TARGETS[idx]
    return (t * (t.log() - om.log_probs(idx))).sum() / 4


# Gemma 3 variants: sliding-window last block with a window shorter than the prompts,
# and eager attention with (ignored) attention soft-capping plus final-logit soft-capping.
FAMILIES = {
    "llama": dict(family="llama"),
    "llama-untied": dict(family="llama", tie_word_embeddings=False),
    "gemma3": dict(family="gemma3"),
    "gemma3-sliding-softcap": dict(
        family="gemma3", attn_implementation="eager", sliding_window=8, final_logit_softcapping=3.0,
        attn_logit_softcapping=5.0, layer_types=["full_attention", "sliding_attention", "sliding_attention"]),
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_cached_engine_equals_full_model_before_and_after_training(name):
    model, tok = build_tiny_model(seed=0, **FAMILIES[name])
    plain_model = copy.deepcopy(model)
    prompts = make_prompts()
    reference = option_probs(model, tok, prompts, RULE).probs
    embedding = model.get_input_embeddings().weight.detach().clone()

    cached = OptionModel(model, tok, RULE, "last_layer").prepare(prompts)
    plain = OptionModel(plain_model, tok, RULE, "last_layer", cache=False).prepare(prompts)
    assert np.abs(cached.predict().numpy() - reference).max() <= 1e-4
    assert np.abs(plain.predict().numpy() - reference).max() <= 1e-4

    r1 = train_loop(cached, BATCHES, kl_loss, epochs=3, lr=1e-2, progress=False)
    r2 = train_loop(plain, BATCHES, kl_loss, epochs=3, lr=1e-2, progress=False)
    assert r1.epoch_loss[-1] < r1.epoch_loss[0]
    # The two paths differ by float rounding (~1e-7) and AdamW at lr 1e-2 turns a rounding-size gradient
    # into a step of up to lr, so after 9 steps they agree to ~1e-4 on one machine and a little less on
    # another BLAS or thread count; a wrong cached path is off by 1e-2 or more.  Compare what is meant:
    # the losses and option probabilities, absolutely, with a tolerance that holds on any machine.
    np.testing.assert_allclose(r1.step_loss, r2.step_loss, rtol=0, atol=2e-3)
    after = cached.predict().numpy()
    assert np.abs(after - reference).max() > 0.05  # training moved the predictions
    assert np.abs(after - plain.predict().numpy()).max() <= 2e-3
    # copied back into a full model, plain option_probs gives the engine's predictions
    exported = cached.export_model()
    assert np.abs(option_probs(exported, tok, prompts, RULE).probs - after).max() <= 1e-4
    # the head was untied: the input embedding never changed
    assert torch.equal(model.get_input_embeddings().weight, embedding)


@pytest.mark.parametrize("arch", ["qwen2-sliding", "qwen3", "mistral-sliding", "gemma2"])
def test_cached_engine_supports_other_llama_like_blocks(arch):
    import transformers as tf

    from dsalib.lm import tiny_tokenizer

    tok = tiny_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                  initializer_range=0.2, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    config = {
        "qwen2-sliding": lambda: tf.Qwen2Config(**common, use_sliding_window=True, sliding_window=8,
                                                max_window_layers=0, attention_bias=True),
        "qwen3": lambda: tf.Qwen3Config(**common),
        "mistral-sliding": lambda: tf.MistralConfig(**common, sliding_window=8),
        "gemma2": lambda: tf.Gemma2Config(**common, sliding_window=8, attn_implementation="eager"),
    }[arch]()
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    prompts = make_prompts(6)
    reference = option_probs(model, tok, prompts, RULE).probs
    om = OptionModel(model, tok, RULE).prepare(prompts)  # prepare itself checks against the full model
    assert np.abs(om.predict().numpy() - reference).max() <= 1e-4


def test_unknown_architectures_and_wrong_cached_results_fail_loudly(monkeypatch):
    import transformers as tf

    from dsalib import engine
    from dsalib.lm import tiny_tokenizer

    tok = tiny_tokenizer()
    gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2)).eval()
    with pytest.raises(EngineError, match="strategy='lora' or 'full'"):
        OptionModel(gpt2, tok, RULE)
    # a cached path that disagrees with the model's forward pass is caught at prepare()
    model, tok = build_tiny_model(seed=0)
    real = engine.block_at_last_position
    monkeypatch.setattr(engine, "block_at_last_position", lambda *a: real(*a) + 1.0)
    with pytest.raises(EngineError, match="disagrees with the model's forward pass"):
        OptionModel(model, tok, RULE).prepare(make_prompts(3))


def test_last_layer_trains_the_last_block_norm_and_option_rows_only():
    model, tok = build_tiny_model(seed=0)
    om = OptionModel(model, tok, RULE)
    names = {n for n, p in om.named_parameters() if p.requires_grad}
    assert names == {n for n in names if n.startswith(("head.", "model.model.layers.2.", "model.model.norm."))}
    assert "head.weight" in names and "model.model.norm.weight" in names
    assert om.head.weight.shape == (5, 64)
    assert om.describe()["trainable_parameters"] == sum(p.numel() for p in om.parameters_to_train())


def test_block_at_last_position_matches_the_block_on_the_whole_sequence():
    model, tok = build_tiny_model(seed=3)
    block = model.model.layers[-1]
    ids = tok(make_prompts(1)[0], return_tensors="pt")["input_ids"]
    seen = {}
    handle = block.register_forward_pre_hook(lambda m, a, k: seen.update(h=a[0], kw=k), with_kwargs=True)
    with torch.no_grad():
        model(ids)
    handle.remove()
    with torch.no_grad():
        full = block(seen["h"], **seen["kw"])
        full = full[0] if isinstance(full, tuple) else full
        cos, sin = seen["kw"]["position_embeddings"]
        last = block_at_last_position(block, seen["h"], torch.ones(ids.shape, dtype=torch.bool), cos, sin)
    torch.testing.assert_close(last, full[:, -1], atol=1e-5, rtol=1e-5)


def test_state_dict_round_trip_restores_predictions():
    model, tok = build_tiny_model(seed=0)
    om = OptionModel(model, tok, RULE).prepare(make_prompts())
    start = om.state_dict()
    before = om.predict()
    train_loop(om, BATCHES, kl_loss, epochs=1, lr=1e-2, progress=False)
    assert not torch.allclose(om.predict(), before)
    om.load_state_dict(start)
    torch.testing.assert_close(om.predict(), before)
    with pytest.raises(EngineError, match="does not match"):
        om.load_state_dict({"head.weight": start["head.weight"]})


def test_train_loop_is_reproducible_and_keeps_the_best_epoch():
    runs = []
    for _ in range(2):
        model, tok = build_tiny_model(seed=0)
        om = OptionModel(model, tok, RULE).prepare(make_prompts())
        scores = iter([3.0, 1.0, 2.0, 2.5, 4.0])  # best after epoch 2, then two worse epochs
        snapshots = []

        def eval_fn(m):
            snapshots.append(m.predict().clone())
            return next(scores)

        res = train_loop(om, BATCHES, kl_loss, epochs=5, lr=1e-2, seed=7, eval_fn=eval_fn, patience=2, progress=False)
        runs.append((res, om.predict()))
        assert isinstance(res, TrainResult) and res.best_epoch == 2 and res.stopped_early and res.epochs_run == 4
        torch.testing.assert_close(om.predict(), snapshots[1])  # best epoch restored
    assert runs[0][0].step_loss == runs[1][0].step_loss
    assert torch.equal(runs[0][1], runs[1][1])


def test_batches_may_be_a_function_of_the_epoch():
    model, tok = build_tiny_model(seed=0)
    om = OptionModel(model, tok, RULE).prepare(make_prompts())
    seen = []

    def batches(epoch):
        seen.append(epoch)
        order = torch.randperm(N, generator=torch.Generator().manual_seed(epoch)).tolist()
        return [order[s : s + 4] for s in range(0, N, 4)]

    res = train_loop(om, batches, kl_loss, epochs=2, lr=1e-3, progress=False)
    assert seen == [0, 1] and len(res.step_loss) == 6


@pytest.mark.parametrize("strategy", ["lora", "full"])
def test_lora_and_full_train_with_multi_token_labels(strategy):
    model, tok = build_tiny_model(seed=0)
    rule = OptionRule(labels=tuple(str(i) for i in range(11)), leading_space=False, scoring="multi_token")
    prompts = make_prompts()
    reference = option_probs(model, tok, prompts, rule).probs
    om = OptionModel(model, tok, rule, strategy, lora_r=4).prepare(prompts)
    np.testing.assert_allclose(om.predict().numpy(), reference, atol=1e-5)
    targets = torch.softmax(2 * torch.randn(N, 11, generator=torch.Generator().manual_seed(2)), -1)

    def loss(m, items):
        idx = torch.tensor(items)
        t = targets[idx]
        return (t * (t.log() - m.log_probs(idx))).sum() / 4

    res = train_loop(om, BATCHES, loss, epochs=3, lr=1e-2, progress=False)
    assert res.epoch_loss[-1] < res.epoch_loss[0]
    trainable = [n for n, p in om.named_parameters() if p.requires_grad]
    if strategy == "lora":
        assert trainable and all("lora_" in n for n in trainable)
        assert om.describe()["lora"]["r"] == 4
    else:
        assert len(trainable) == len(list(om.parameters()))
    # the exported model reads the same distribution
    exported = om.export_model()
    np.testing.assert_allclose(option_probs(exported, tok, prompts, rule).probs, om.predict().numpy(), atol=1e-5)


def test_last_layer_refuses_multi_token_rules():
    model, tok = build_tiny_model(seed=0)
    rule = OptionRule(labels=("1", "10"), leading_space=False, scoring="multi_token")
    with pytest.raises(EngineError, match="one token per option"):
        OptionModel(model, tok, rule, "last_layer")


def test_bad_input_is_reported():
    model, tok = build_tiny_model(seed=0)
    with pytest.raises(EngineError, match="unknown strategy"):
        OptionModel(model, tok, RULE, "adapter")
    om = OptionModel(model, tok, RULE)
    with pytest.raises(EngineError, match="prepare"):
        om.probs([0])
    om.prepare(make_prompts(3))
    with pytest.raises(EngineError, match=r"\[5\] are out of range: 3 prompts"):
        om.probs([0, 5])
    with pytest.raises(EngineError, match="scalar"):
        train_loop(om, [[0, 1]], lambda m, items: m.log_probs(items).sum(dim=1), progress=False)


def test_diverging_training_is_reported():
    model, tok = build_tiny_model(seed=0)
    om = OptionModel(model, tok, RULE).prepare(make_prompts(4))
    with torch.no_grad():
        om.head.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLogitsError, match="NaN/inf option logits"):
        om.probs([0, 1])


def test_on_disk_prefix_cache_is_reused(tmp_path):
    model, tok = build_tiny_model(seed=0)
    prompts = make_prompts(6)
    first = OptionModel(copy.deepcopy(model), tok, RULE, cache_dir=tmp_path).prepare(prompts)
    files = sorted(tmp_path.rglob("*.safetensors"))
    assert len(files) == 6
    second = OptionModel(copy.deepcopy(model), tok, RULE, cache_dir=tmp_path).prepare(prompts)
    assert first.prefix_computed == 6 and second.prefix_computed == 0  # nothing recomputed
    torch.testing.assert_close(second.predict(), first.predict())
    # different frozen weights give a different key
    other, _ = build_tiny_model(seed=1)
    OptionModel(other, tok, RULE, cache_dir=tmp_path).prepare(prompts)
    assert len(sorted(tmp_path.rglob("*.safetensors"))) == 12
