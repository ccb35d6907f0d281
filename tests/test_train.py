"""Phase 1 and Phase 2 on engine.train_loop: the loss contract, epoch selection, and agreement with a plain loop."""

import numpy as np
import pytest
import torch

from dsalib import llm_methods as L, surveys
from dsalib.engine import train_loop
from dsalib.errors import DsaError
from dsalib.train import (Phase1Config, Phase2Config, _weights, phase1_loss_fn, phase2_loss_fn, phase2_pairs,
                          run_phase1, validation_ce, weighted_batches)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(ess9):
    """The tiny model prepared on an ESS9 training table (its rows are the prompt positions)."""
    lm = L.LanguageModel.load("tiny")
    train = surveys.enhancement_split(ess9, "imbgeco", 300, 0).train
    om, initial = lm.option_model(train.n_options)
    om.load_state_dict(initial)
    om.prepare(L.Direct(lm, ess9).fit(train)._prompts(train.keys))
    yield om, initial, train
    om.load_state_dict(initial)


def _value(loss):
    return float(loss.detach())


def _shares(loss_fn, om, batch, world):
    return sum(_value(loss_fn(om, batch[r::world])) for r in range(world) if batch[r::world])


@pytest.mark.parametrize("weighting", ["count", "uniform"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_phase1_batch_loss_is_the_sum_of_its_process_shares(setup, weighting, direction):
    om, initial, train = setup
    om.load_state_dict(initial)
    cfg = Phase1Config(weighting=weighting, direction=direction, batch_size=7)
    idx = np.arange(train.n_subgroups)
    loss_fn = phase1_loss_fn(idx, train.dist, cfg)
    weights = _weights(train.n, weighting)
    batch = weighted_batches(weights, cfg.batch_size, np.random.default_rng(0))[0]
    whole = _value(loss_fn(om, batch))
    for world in (2, 3, 8):  # 8 > 7 items: one share is empty
        assert _shares(loss_fn, om, batch, world) == pytest.approx(whole, rel=1e-5)
    # and the batch loss is the weighted mean KL of the batch (the old per-batch normalisation)
    pos = np.array([i for i, _ in batch])
    with torch.no_grad():
        pred = om.probs(pos, grad=False).double()
    t = torch.as_tensor(train.dist[pos])
    if direction == "forward":
        per = torch.where(t > 0, t * (t.clamp_min(1e-30).log() - pred.log()), 0.0).sum(1)
    else:
        q = (1 - cfg.target_smoothing) * t + cfg.target_smoothing / t.shape[1]
        per = (pred * (pred.log() - q.log())).sum(1)
    w = torch.as_tensor(weights[pos])
    assert whole == pytest.approx(float((per * w).sum() / w.sum()), rel=1e-5)


def test_phase2_batch_loss_is_the_mean_over_pairs_and_the_sum_of_its_shares(setup):
    om, initial, train = setup
    om.load_state_dict(initial)
    cfg = Phase2Config(min_pair_size=2, batch_size=6)
    pairs = surveys.hamming1_pairs(train, cfg.min_pair_size)
    assert len(pairs) >= 6
    idx = np.arange(train.n_subgroups)
    ref, small, attr, ops = phase2_pairs(om, train, idx, pairs, surveys.hamming1_pairs(train, 1), cfg)
    assert (train.n[ref] >= train.n[small]).all()
    loss_fn = phase2_loss_fn(idx, ref, small, attr, train.keys, ops, cfg)
    batch = weighted_batches(np.ones(len(ref)), cfg.batch_size, np.random.default_rng(1))[0]
    assert all(w == pytest.approx(1 / 6) for _, w in batch)
    whole = _value(loss_fn(om, batch))
    per_pair = [_value(loss_fn(om, [(i, 1.0)])) for i, _ in batch]
    assert whole == pytest.approx(np.mean(per_pair), rel=1e-5)
    for world in (2, 4):
        assert _shares(loss_fn, om, batch, world) == pytest.approx(whole, rel=1e-5)


def test_weighted_batches_normalise_each_batch():
    weights = np.array([1.0, 2, 3, 4, 5, 6, 7])
    batches = weighted_batches(weights, 3, np.random.default_rng(0))
    assert sorted(i for b in batches for i, _ in b) == list(range(7))
    assert [len(b) for b in batches] == [3, 3, 1]
    for b in batches:
        assert sum(w for _, w in b) == pytest.approx(1.0)
        assert [w for _, w in b] == pytest.approx([weights[i] / weights[[j for j, _ in b]].sum() for i, _ in b])
    with pytest.raises(DsaError, match="zero total weight"):
        weighted_batches(np.zeros(3), 2, np.random.default_rng(0))


def test_phase1_equals_a_plain_adamw_loop(setup):
    """train_loop with the Phase 1 loss takes the steps a hand-written AdamW loop takes over the same batches."""
    om, initial, train = setup
    cfg = Phase1Config(lr=1e-2, epochs=2, batch_size=8, seed=3)
    om.load_state_dict(initial)
    rep = run_phase1(om, train, lambda keys: train.index_of(keys), cfg)
    via_loop = om.predict()
    assert rep.epochs == 2 and len(rep.train_loss) == 2

    om.load_state_dict(initial)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(om.parameters_to_train(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    n = train.n.astype(float)
    for _ in range(cfg.epochs):
        order = rng.permutation(train.n_subgroups)
        for s in range(0, len(order), cfg.batch_size):
            b = order[s:s + cfg.batch_size]
            pred = om.probs(torch.as_tensor(b), grad=True)
            t = torch.as_tensor(train.dist[b], dtype=pred.dtype)
            kl = torch.where(t > 0, t * (t.clamp_min(1e-30).log() - pred.log()), 0.0).sum(1)
            w = torch.as_tensor(n[b], dtype=pred.dtype)
            loss = (kl * w).sum() / w.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.testing.assert_close(via_loop, om.predict(), atol=1e-5, rtol=0)
    om.load_state_dict(initial)


def test_epoch_selection_can_keep_the_initial_weights(setup):
    om, initial, train = setup
    fit, val = surveys.split_counts(train, 0.3, 0)
    index = lambda keys: train.index_of(keys)
    om.load_state_dict(initial)
    start = om.predict()
    ce0 = validation_ce(om, index(val.keys), val.counts)
    # a learning rate this large makes every epoch worse than the start: the best epoch is 0
    rep = run_phase1(om, fit, index, Phase1Config(lr=3.0, max_epochs=5, patience=2, seed=0), val=val)
    assert rep.epochs == 0 and rep.selected_on_validation
    assert rep.val_ce[0] == pytest.approx(ce0) and len(rep.val_ce) == 3  # start, then 2 epochs of patience
    assert min(rep.val_ce[1:]) > rep.val_ce[0]
    torch.testing.assert_close(om.predict(), start)  # the initial weights were restored
    # a moderate one improves and keeps its best epoch (≥ 1), with the validation curve beside it
    om.load_state_dict(initial)
    rep = run_phase1(om, fit, index, Phase1Config(lr=1e-2, max_epochs=4, patience=2, seed=0), val=val)
    assert rep.epochs >= 1 and rep.val_ce[rep.epochs] == min(rep.val_ce)
    assert validation_ce(om, index(val.keys), val.counts) == pytest.approx(rep.val_ce[rep.epochs], abs=1e-9)
    om.load_state_dict(initial)


def test_validation_ce_is_the_batched_cross_entropy_per_respondent(setup):
    om, initial, train = setup
    om.load_state_dict(initial)
    idx = np.arange(train.n_subgroups)
    om.batch_size, size = 5, om.batch_size  # several batches
    try:
        ce = validation_ce(om, idx, train.counts)
    finally:
        om.batch_size = size
    with torch.no_grad():
        p = om.probs(idx, grad=False).double().numpy()
    assert ce == pytest.approx(-(train.counts * np.log(p)).sum() / train.counts.sum(), rel=1e-5)


def test_zero_epochs_train_nothing(setup):
    om, initial, train = setup
    om.load_state_dict(initial)
    rep = run_phase1(om, train, lambda keys: train.index_of(keys), Phase1Config(epochs=0))
    assert rep.epochs == 0 and rep.train_loss == []
    assert all(torch.equal(v, initial[k]) for k, v in om.state_dict().items())
    res = train_loop(om, [[0, 1]], lambda m, items: m.log_probs(items).sum(), epochs=0, progress=False)
    assert res.epochs_run == 0 and res.step_loss == []
