"""engine.train_loop's selection options: an initial evaluation, a tolerance for improvement, bad input."""

import pytest
import torch

from dsalib.distributed import gather_shards
from dsalib.engine import EngineError, OptionModel, predict_rows, train_loop
from dsalib.lm import OptionRule, build_tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 8
PROMPTS = [f"Respondent {i}: age {20 + 5 * i}. Question: Agree?\nAnswer:" for i in range(N)]
TARGETS = torch.softmax(2 * torch.randn(N, 5, generator=torch.Generator().manual_seed(1)), -1)


def kl_loss(om, items):  # a sum over items, each weighted 1 / batch size
    idx = torch.tensor(items)
    t = TARGETS[idx]
    return (t * (t.log() - om.log_probs(idx))).sum() / 4


BATCHES = [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.fixture()
def om():
    model, tok = build_tiny_model(seed=0)
    return OptionModel(model, tok, OptionRule.letters(5)).prepare(PROMPTS)


def test_initial_evaluation_lets_the_initial_parameters_win(om):
    start = om.predict()
    scores = iter([1.0, 2.0, 3.0, 4.0])
    res = train_loop(om, BATCHES, kl_loss, epochs=5, lr=1e-2, eval_fn=lambda m: next(scores), eval_initial=True,
                     patience=3, progress=False)
    assert res.best_epoch == 0 and res.eval_history == [1.0, 2.0, 3.0, 4.0]
    assert res.stopped_early and res.epochs_run == 3
    torch.testing.assert_close(om.predict(), start)


def test_min_improvement_is_a_tolerance(om):
    scores = iter([1.0, 0.9999995, 0.5, 0.4999])
    res = train_loop(om, BATCHES, kl_loss, epochs=3, lr=1e-2, eval_fn=lambda m: next(scores), eval_initial=True,
                     min_improvement=1e-6, progress=False)
    # 0.9999995 is not lower by more than 1e-6; 0.5 is; 0.4999 is too
    assert res.best_epoch == 3 and not res.stopped_early
    scores = iter([1.0, 0.9999995, 0.99999999])
    res = train_loop(om, BATCHES, kl_loss, epochs=2, lr=1e-2, eval_fn=lambda m: next(scores), eval_initial=True,
                     min_improvement=1e-6, patience=2, progress=False)
    assert res.best_epoch == 0 and res.stopped_early


def test_a_single_process_predicts_every_row(om):
    torch.testing.assert_close(predict_rows(om, [3, 1, 2]), om.predict([3, 1, 2]))
    local = torch.arange(6.0).reshape(3, 2)
    assert gather_shards(local, 3) is local


def test_bad_arguments_are_reported(om):
    with pytest.raises(EngineError, match="epochs must be a whole number"):
        train_loop(om, BATCHES, kl_loss, epochs=-1, progress=False)
    with pytest.raises(EngineError, match="eval_initial=True needs an eval_fn"):
        train_loop(om, BATCHES, kl_loss, eval_initial=True, progress=False)
    with pytest.raises(EngineError, match="min_improvement"):
        train_loop(om, BATCHES, kl_loss, eval_fn=lambda m: 0.0, min_improvement=-1, progress=False)
    with pytest.raises(EngineError, match="scalar"):
        train_loop(om, BATCHES, lambda m, items: 1.0, progress=False)


def test_a_sharding_accelerate_config_is_refused_for_an_unsharded_model(om):
    """Under FSDP/DeepSpeed configs an unsharded option model would be replicated per process: a clear error."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    assert not om.fsdp  # a last_layer model in a plain process
    for kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        fake = SimpleNamespace(distributed_type=kind, device=torch.device("cpu"), num_processes=1)
        with pytest.raises(EngineError, match="not sharded.*FSDP shards the lora and full.*multi_gpu.yaml"):
            train_loop(om, BATCHES, kl_loss, progress=False, accelerator=fake)


def test_fsdp_settings_the_engine_cannot_honour_are_refused_before_sharding(monkeypatch):
    from dsalib import distributed, engine, lm

    model, tok = build_tiny_model(seed=0)
    with pytest.raises(EngineError, match="FSDP shards the lora and full strategies only.*multi_gpu.yaml"):
        OptionModel(model, tok, OptionRule.letters(5), fsdp=True)
    with pytest.raises(EngineError, match="this is a single process"):
        OptionModel(model, tok, OptionRule.letters(5), strategy="full", fsdp=True)
    monkeypatch.setattr(engine, "process_share", lambda: (0, 2))  # as process 0 of 2
    for env, value, message in (("FSDP_OFFLOAD_PARAMS", "true", "fsdp_offload_params: true"),
                                ("FSDP_RESHARD_AFTER_FORWARD", "false", "fsdp_reshard_after_forward: false"),
                                ("FSDP_CPU_RAM_EFFICIENT_LOADING", "true", "fsdp_cpu_ram_efficient_loading: true")):
        monkeypatch.setenv(env, value)
        with pytest.raises(EngineError, match=f"cannot shard with {message}"):
            OptionModel(model, tok, OptionRule.letters(5), strategy="full", fsdp=True)
        monkeypatch.delenv(env)
    model.hf_device_map = {"model.embed_tokens": "cpu", "model.layers": 0}
    with pytest.raises(EngineError, match="loaded with a device_map over"):
        OptionModel(model, tok, OptionRule.letters(5), strategy="full", fsdp=True)
    # cpu-RAM-efficient loading would load uninitialised weights on all but one process: refused before loading
    monkeypatch.setattr(distributed, "fsdp_launched", lambda: True)
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    with pytest.raises(EngineError, match="fsdp_cpu_ram_efficient_loading: true"):
        lm.load_model("tiny")


def test_outside_an_fsdp_launch_nothing_is_sharded(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # the flag alone, in a plain process: one process, no FSDP
    model, tok = build_tiny_model(seed=0)
    om = OptionModel(model, tok, OptionRule.letters(5), strategy="full")
    assert not om.fsdp and "fsdp_processes" not in om.describe()
