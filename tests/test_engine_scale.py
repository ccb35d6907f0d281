"""The engine at scale, on CPU with tiny models: precision, placement/sharding, prefix-cache memory."""

import copy
import warnings

import numpy as np
import pytest
import torch
from safetensors import safe_open

from dsalib import lm
from dsalib.engine import EngineError, OptionModel, PrefixCache, train_loop
from dsalib.lm import OptionRule, build_tiny_model, dispatch, option_probs, pinned_device_map

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
    idx = torch.tensor(items)
    t = TARGETS[idx]
    return (t * (t.log() - om.log_probs(idx))).sum() / 4


def adamw_steps(om, steps, lr=5e-5):
    """AdamW (the paper's lr and weight decay); returns, per trainable tensor, which elements ever changed."""
    params = om.parameters_to_train()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    ever = [torch.zeros_like(p, dtype=torch.bool) for p in params]
    for step in range(steps):
        before = [p.detach().clone() for p in params]
        opt.zero_grad()
        kl_loss(om, BATCHES[step % len(BATCHES)]).backward()
        opt.step()
        for e, p, b in zip(ever, params, before):
            e |= p.detach() != b
    return ever


# --------------------------------------------------------------------------- precision


def test_a_bf16_parameter_loses_adamw_updates_at_lr_5e_5():
    """The failure the engine avoids: the criterion below detects it."""
    p = torch.nn.Parameter(torch.full((64,), 0.3, dtype=torch.bfloat16))
    opt = torch.optim.AdamW([p], lr=5e-5, weight_decay=0.01)
    before = p.detach().clone()
    for _ in range(6):
        p.grad = torch.ones_like(p)
        opt.step()
    assert torch.equal(p.detach(), before)


# A bf16 model against an fp32 run of the same weights, largest difference in option probability.
# last_layer and lora: the prefix's bf16 rounding (measured 0.016-0.023 before and after training on this
# tiny model, whose init_std 0.2 makes activations large).  full: fp32 master weights but bf16 compute in
# the forward and backward (autocast); AdamW's first steps follow each gradient element's sign, so elements
# with tiny gradients move by about lr in directions the rounding decides (measured 0.015 before, 0.090
# after 6 steps).
BF16_VS_FP32_TOL = {"last_layer": 0.05, "lora": 0.05, "full": 0.15}


@pytest.mark.parametrize("strategy", ["last_layer", "lora", "full"])
def test_bf16_model_trains_fp32_parameters_and_every_element_moves(strategy):
    model32, tok = build_tiny_model(seed=0)
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    prompts = make_prompts()
    om16 = OptionModel(model16, tok, RULE, strategy, lora_r=4).prepare(prompts)
    om32 = OptionModel(model32, tok, RULE, strategy, lora_r=4).prepare(prompts)
    assert {p.dtype for p in om16.parameters_to_train()} == {torch.float32}
    assert om16.describe()["prefix_dtype"] == "bfloat16" and om16.describe()["trainable_dtype"] == "float32"
    if strategy == "last_layer":  # the frozen prefix stays in the model's dtype
        assert model16.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
        assert model16.model.embed_tokens.weight.dtype == torch.bfloat16
    if strategy == "full":
        assert om16.describe()["autocast_dtype"] == "bfloat16"
    assert (om16.predict() - om32.predict()).abs().max() <= BF16_VS_FP32_TOL[strategy]
    ever16 = adamw_steps(om16, 6)
    adamw_steps(om32, 6)
    assert all(bool(e.all()) for e in ever16)  # no update was lost to rounding
    assert (om16.predict() - om32.predict()).abs().max() <= BF16_VS_FP32_TOL[strategy]


def test_bf16_cached_and_plain_paths_agree_and_export_reads_the_same():
    model, tok = build_tiny_model(seed=0)
    model = model.to(torch.bfloat16)
    plain_model = copy.deepcopy(model)
    prompts = make_prompts()
    cached = OptionModel(model, tok, RULE).prepare(prompts)  # prepare checks cached == forward to 1e-4
    plain = OptionModel(plain_model, tok, RULE, cache=False).prepare(prompts)
    assert (cached.predict() - plain.predict()).abs().max() <= 1e-4
    train_loop(cached, BATCHES, kl_loss, epochs=1, lr=1e-3, progress=False)
    exported = cached.export_model()
    assert exported.lm_head.weight.dtype == torch.float32  # the trained rows keep their precision
    np.testing.assert_allclose(option_probs(exported, tok, prompts, RULE).probs, cached.predict().numpy(), atol=1e-4)


# --------------------------------------------------------------------------- placement and sharding

OFFLOAD_MAP = {"model.embed_tokens": "disk", "model.layers.0": "disk", "model.layers.1": "cpu",
               "model.layers.2": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}


def test_offloaded_prefix_gives_the_same_predictions_and_training(tmp_path):
    model, tok = build_tiny_model(seed=0, tie_word_embeddings=False)
    plain = copy.deepcopy(model)
    sharded = dispatch(model, OFFLOAD_MAP, offload_folder=tmp_path / "offload")
    assert sharded.model.layers[0].self_attn.q_proj.weight.device.type == "meta"  # really offloaded
    prompts = make_prompts()
    a = OptionModel(sharded, tok, RULE).prepare(prompts)
    b = OptionModel(plain, tok, RULE).prepare(prompts)
    assert (a.predict() - b.predict()).abs().max() <= 1e-5
    ra = train_loop(a, BATCHES, kl_loss, epochs=2, lr=1e-3, progress=False)
    rb = train_loop(b, BATCHES, kl_loss, epochs=2, lr=1e-3, progress=False)
    np.testing.assert_allclose(ra.step_loss, rb.step_loss, rtol=0, atol=1e-5)
    assert (a.predict() - b.predict()).abs().max() <= 1e-5


def test_a_trained_block_on_meta_is_an_error(tmp_path):
    from accelerate import dispatch_model

    model, tok = build_tiny_model(seed=0)
    bad = dict(OFFLOAD_MAP, **{"model.layers.2": "disk"})  # the user's own map offloads the last block
    sharded = dispatch_model(model, device_map=bad, main_device="cpu", offload_dir=tmp_path)
    with pytest.raises(EngineError, match="offloaded"):
        OptionModel(sharded, tok, RULE)


def test_pinned_device_map_keeps_the_last_block_and_norm_resident(tmp_path):
    model, _ = build_tiny_model(seed=0)
    pinned = pinned_device_map(model, dict(OFFLOAD_MAP, **{"model.layers.2": "disk", "model.norm": "disk"}))
    assert pinned["model.layers.2"] == "cpu" and pinned["model.norm"] == "cpu"
    # a coarse map is split so that only the trained modules move
    coarse = pinned_device_map(model, {"model": "disk", "lm_head": "cpu"})
    assert coarse["model.layers.2"] == "cpu" and coarse["model.norm"] == "cpu" and coarse["model.layers.0"] == "disk"
    # "auto" with a small CPU budget offloads early layers to disk but not the trained ones
    loaded, tok = lm.load_model("tiny", device_map="auto", max_memory={"cpu": "150KB"},
                                offload_folder=tmp_path / "off")
    assert lm.is_dispatched(loaded) and "disk" in loaded.hf_device_map.values()
    ref, _ = build_tiny_model()
    prompts = make_prompts(4)
    om = OptionModel(loaded, tok, RULE).prepare(prompts)
    np.testing.assert_allclose(om.predict().numpy(), option_probs(ref, tok, prompts, RULE).probs, atol=1e-5)


def test_load_model_rejects_device_with_device_map():
    with pytest.raises(lm.DsaError, match="both device"):
        lm.load_model("tiny", device="cpu", device_map="auto")
    with pytest.raises(lm.DsaError, match="only apply with a device_map"):
        lm.load_model("tiny", max_memory={"cpu": "1GB"})


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_comes_from_the_checkpoint_files_not_the_tensors(tmp_path, monkeypatch):
    model, tok = build_tiny_model(seed=0)
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    loaded, tok = lm.load_model(str(tmp_path / "ckpt"), device="cpu")
    om = OptionModel(loaded, tok, RULE, cache_dir=tmp_path / "cache")

    def no_reading(*a, **k):
        raise AssertionError("the fingerprint read a tensor")

    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "numpy", no_reading)
        key = om.fingerprint()
    again, _ = lm.load_model(str(tmp_path / "ckpt"), device="cpu")
    assert OptionModel(again, tok, RULE).fingerprint() == key
    # rewriting the weights (a new checkpoint in the same folder) changes the key
    model2, _ = build_tiny_model(seed=1)
    model2.save_pretrained(tmp_path / "ckpt")
    other, _ = lm.load_model(str(tmp_path / "ckpt"), device="cpu")
    assert OptionModel(other, tok, RULE).fingerprint() != key
    # the prefix dtype is part of the key
    half, _ = lm.load_model(str(tmp_path / "ckpt"), device="cpu", dtype=torch.bfloat16)
    assert OptionModel(half, tok, RULE).fingerprint() != OptionModel(other, tok, RULE).fingerprint()


def test_an_offloaded_model_without_files_cannot_key_a_disk_cache(tmp_path):
    model, tok = build_tiny_model(seed=0, tie_word_embeddings=False)
    sharded = dispatch(model, OFFLOAD_MAP, offload_folder=tmp_path / "offload")
    with pytest.raises(EngineError, match="cannot be hashed"):
        OptionModel(sharded, tok, RULE, cache_dir=tmp_path / "cache").prepare(make_prompts(2))


# --------------------------------------------------------------------------- memory


def test_prefix_cache_is_an_lru_with_a_byte_budget():
    cache = PrefixCache(3 * 40)  # three fp32 tensors of 10 elements
    for k in range(3):
        assert cache.put((k,), torch.zeros(10))
    cache.get((0,))  # 0 is now the most recently used
    cache.put((3,), torch.zeros(10))
    assert (1,) not in cache and (0,) in cache and cache.evictions == 1
    assert cache.bytes == cache.peak_bytes == 120
    assert not cache.put((4,), torch.zeros(31))  # larger than the budget: not stored
    with pytest.raises(EngineError, match="prefix_cache_bytes"):
        PrefixCache(-1)


def test_a_budget_smaller_than_the_working_set_gives_the_same_results(tmp_path):
    model, tok = build_tiny_model(seed=0)
    prompts = make_prompts()
    full = OptionModel(copy.deepcopy(model), tok, RULE, prefix_cache_bytes=None).prepare(prompts)
    need = full.prefix_cache.bytes
    budget = need // 3
    before = full.predict()
    with pytest.warns(UserWarning, match="recomputed"):
        small = OptionModel(copy.deepcopy(model), tok, RULE, prefix_cache_bytes=budget, prefix_batch_size=5)
        small.prepare(prompts)
    torch.testing.assert_close(small.predict(), before, rtol=0, atol=1e-6)
    r1 = train_loop(small, BATCHES, kl_loss, epochs=2, lr=1e-3, progress=False)
    r2 = train_loop(full, BATCHES, kl_loss, epochs=2, lr=1e-3, progress=False)
    np.testing.assert_allclose(r1.step_loss, r2.step_loss, rtol=0, atol=1e-6)
    assert small.prefix_cache.peak_bytes <= budget < need
    assert small.prefix_computed > N  # evicted entries were recomputed
    # with a disk cache, evicted entries are read back instead of recomputed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        disk = OptionModel(copy.deepcopy(model), tok, RULE, prefix_cache_bytes=budget, cache_dir=tmp_path)
        disk.prepare(prompts)
    torch.testing.assert_close(disk.predict(), before, rtol=0, atol=1e-6)
    assert disk.prefix_computed == N and disk.prefix_loaded > 0 and disk.prefix_cache.peak_bytes <= budget


def test_disk_cache_holds_hidden_states_only(tmp_path):
    model, tok = build_tiny_model(seed=0)
    OptionModel(model, tok, RULE, cache_dir=tmp_path).prepare(make_prompts(2))
    files = sorted(tmp_path.rglob("*.safetensors"))
    assert len(files) == 2
    with safe_open(str(files[0]), "pt") as f:
        assert list(f.keys()) == ["h"]


def test_passes_over_all_prompts_are_batched():
    model, tok = build_tiny_model(seed=0)
    prompts = make_prompts()
    calls = []
    handle = model.model.register_forward_pre_hook(lambda m, a, k: calls.append(k["input_ids"].shape[0]),
                                                   with_kwargs=True)
    om = OptionModel(model, tok, RULE, batch_size=4, prefix_batch_size=5).prepare(prompts)
    handle.remove()
    assert calls == [5, 5, 2]  # the prefix pass, in batches of prefix_batch_size
    sizes = []
    real = om.forward
    om.forward = lambda idx: sizes.append(len(idx)) or real(idx)
    om.log_probs(range(N), grad=False)  # a validation pass
    om.predict()
    assert sizes == [4, 4, 4, 4, 4, 4]
    with pytest.raises(EngineError, match="prefix_batch_size must be a positive integer"):
        OptionModel(model, tok, RULE, prefix_batch_size=0)


# --------------------------------------------------------------------------- the scale benchmark


def _scale_check():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "scale_check.py"
    spec = importlib.util.spec_from_file_location("scale_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scale_check_cpu_measurements():
    sc = _scale_check()
    assert sc.measure_bf16(n_prompts=4, steps=2)["bf16_trainable_changed_fraction"] == 1.0
    assert sc.measure_offload(n_prompts=4, epochs=1)["offload_max_abs_diff"] <= 1e-5
    cache = sc.measure_prefix_cache(n_prompts=6, epochs=1)
    assert 0 < cache["prefix_cache_peak_bytes"] <= cache["prefix_cache_budget_bytes"] < cache["prefix_cache_working_set_bytes"]
    assert cache["prefix_cache_max_abs_diff"] <= 1e-5


def test_scale_check_config_and_projection_arithmetic():
    sc = _scale_check()
    config = sc.arch_config("qwen3-4b", layers=2)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            config.intermediate_size, config.vocab_size, config.head_dim, config.rope_theta,
            config.tie_word_embeddings) == (2560, 2, 32, 8, 9728, 151936, 128, 1e6, True)
    assert sc.arch_config("qwen3-4b").num_hidden_layers == 36
    grid = {"datasets": {"X": {"prompts": 32, "n": 100, "train_subgroups": 32}}, "questions": 1, "seeds": 1,
            "tokens_per_prompt": 10, "prompt_templates": 1, "predict_passes": 1, "phase2_steps_per_phase1_step": 1.0,
            "batch": 16, "paper_epochs": 1, "selection_epochs": 2, "validation_share": 0.5}
    m = {"prefix_tokens_per_s": 100.0, "cached_step_s": 0.1, "plain_step_s": 1.0, "cached_predict_batch_s": 0.01}
    out = sc.project_grid(m, grid)
    # prefix 32 prompts x 10 tokens / 100 tok/s = 3.2 s; paper: 2 Phase 1 + 2 Phase 2 steps, 2 prediction batches
    assert out["projected_hours_cached_paper"] * 3600 == pytest.approx(3.2 + 4 * 0.1 + 2 * 0.01)
    assert out["projected_hours_plain_paper"] * 3600 == pytest.approx(4 * 1.0 + 2 * (16 * 0.1 + 0.01))
    # epoch selection: 16 training subgroups x 2 epochs = 2 + 2 steps, (1 + 2 validation) passes x 2 batches
    assert out["projected_hours_cached_epoch_selection"] * 3600 == pytest.approx(3.2 + 4 * 0.1 + 6 * 0.01)
    assert out["projected_hours_plain_epoch_selection"] * 3600 == pytest.approx(4 * 1.0 + 6 * (16 * 0.1 + 0.01))
    assert out["grid_prompts"] == 32 and out["training_steps_paper"] == 4


def test_accelerate_configs_parse():
    from pathlib import Path

    from accelerate.commands.config.config_args import ClusterConfig

    root = Path(__file__).resolve().parent.parent / "configs" / "accelerate"
    kinds = {f.name: ClusterConfig.from_yaml_file(str(f)).distributed_type.value for f in sorted(root.glob("*.yaml"))}
    assert kinds == {"fsdp.yaml": "FSDP", "multi_gpu.yaml": "MULTI_GPU"}


def test_a_checkpoint_loaded_with_disk_offload_trains_and_keys_its_cache(tmp_path):
    model, tok = build_tiny_model(seed=0)  # tied head: its offloaded weight is stored under the embedding
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    loaded, tok = lm.load_model(str(tmp_path / "ckpt"), device_map="auto", max_memory={"cpu": "150KB"},
                                offload_folder=tmp_path / "off")
    assert loaded.lm_head.weight.device.type == "meta" and loaded.hf_device_map["model.layers.2"] == "cpu"
    prompts = make_prompts(4)
    om = OptionModel(loaded, tok, RULE, cache_dir=tmp_path / "cache").prepare(prompts)  # fingerprint from files
    np.testing.assert_allclose(om.predict().numpy(), option_probs(model, tok, prompts, RULE).probs, atol=1e-5)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 4
