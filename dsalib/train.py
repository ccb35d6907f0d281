"""Phase 1 (TKFT) and Phase 2 (DSA): their losses, batches and configurations.

Both phases run on the library's one training loop,
:func:`dsalib.engine.train_loop` (AdamW, seeded, data-parallel under
``accelerate launch``), and train an :class:`dsalib.engine.OptionModel` (by default only the
last transformer block and the option rows of the output layer, from the
cached frozen prefix) so that the option distribution of a subgroup's prompt
moves toward a target.

Phase 1 (paper section 2.2; TKFT when used alone)
    Loss per subgroup: ``KL(P_train(C|b) || P_model(C|b))`` (``direction=
    "forward"``, as Suh et al.; the default) or ``KL(P_model || P_train)``
    (``"reverse"``, as the DSA paper's equation writes it).  Forward is the
    default because a small subgroup's training distribution has options with
    zero count, where the reverse KL is infinite; ``"reverse"`` smooths the
    target with ``target_smoothing``.  Subgroup losses are combined with
    weights proportional to the training count (``weighting="count"``, the
    default: it beat the unweighted sum in the prototype of DESIGN.md
    section 8; with epoch selection the two were level on ESS9, see the
    README) or equal weights (``"uniform"``, the paper's plain sum).

Epoch selection
    The paper trains one epoch at lr 5e-5; a small model is far from converged
    then, and training to convergence memorises the sample.  With
    ``epochs=None`` the training sample is split by respondents into a fit part
    and a validation part (``val_fraction``); the model trains on the fit part
    for up to ``max_epochs``, the validation cross-entropy (per respondent) is
    measured after every epoch, and the best epoch count is kept (early stop
    after ``patience`` epochs without improvement).  The model is then
    retrained from its initial weights on the whole training sample for that
    many epochs (done by :class:`dsalib.llm_methods.FineTuned`).  The
    evaluation truth is never used.  The validation cross-entropy is measured
    before the first epoch too, and a lower value must beat the best by more
    than 1e-6 to count, so the chosen epoch count may be 0 (the initial
    weights win).

Phase 2 (paper section 2.3; DSA)
    After Phase 1, one quantile-mapping operator per single-attribute change
    ``k: u→v`` is estimated from the Phase 1 predictions, pooled over every
    Hamming-1 pair of training subgroups with that change (``dsalib.quantile``).
    Training pairs are Hamming-1 pairs whose subgroups both have at least
    ``min_pair_size`` training respondents; the larger subgroup is the
    reference, its current prediction (detached) mapped through the operator is
    the target for the smaller one, and the loss is
    ``KL(P_model(C|b_small) || target)`` (target smoothed by
    ``target_smoothing`` so the KL is finite).  Gradients flow only through the
    smaller subgroup's prediction.  A batch's loss is the mean over its pairs.
    :class:`dsalib.llm_methods.FineTuned` keeps Phase 2 only if it does not
    raise the validation cross-entropy on the fit/validation split
    (``guard=True``); its report's ``phase2.outcome`` says ``run``,
    ``skipped`` (no pair) or ``rejected`` (by the guard).

The loss contract (:func:`dsalib.engine.train_loop`)
    A loss function returns a *sum over its items*; each item carries its
    weight already divided by the whole batch's normaliser
    (:func:`weighted_batches`: the batch's count sum for
    ``weighting="count"``, its size for ``"uniform"`` and for Phase 2's mean
    over pairs).  So the loss of a batch equals the sum of the losses of its
    process shares, and one process and N processes take the same step.

What changed when the loops moved onto ``train_loop`` (numbers move slightly)
    The two AdamW loops that lived here (Phase 1's ``_run_epochs`` and the
    Phase 2 loop) are gone.  The batches, their order (one permutation per
    epoch from ``default_rng(seed)``, drawn in epoch order), the optimiser
    settings, the selection rule and the patience rule are unchanged.  What
    differs is floating-point order only: a batch's loss is
    ``Σ (w_i / Σ w) KL_i`` instead of ``Σ w_i KL_i / Σ w``, Phase 2's is
    ``Σ KL_i / B`` instead of ``mean``, and the validation and all-subgroup
    prediction passes are batched (:meth:`OptionModel.predict`) instead of one
    forward pass over every prompt.  ``Phase1Report.train_loss`` is now the
    mean batch loss per epoch (it was the per-subgroup mean), and
    ``Phase2Report`` has no ``kept`` flag (the caller decides).  On ESS9
    (SmolLM2-135M, n = 500) predictions moved by at most 9.4e-6 and the mean
    JSD by at most 3.7e-7, with the same chosen epochs and Phase 2 outcomes
    (README, "One training loop: how much the numbers moved").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from . import quantile
from .errors import DsaError
from .surveys import SubgroupTable, hamming1_pairs


@dataclass
class Phase1Config:
    lr: float = 5e-5
    weight_decay: float = 0.01
    batch_size: int = 16
    epochs: int | None = None  # fixed number of epochs; None = choose on validation
    max_epochs: int = 30
    patience: int = 3
    val_fraction: float = 0.2
    direction: str = "forward"
    weighting: str = "count"
    target_smoothing: float = 1e-3
    seed: int = 0

    def check(self) -> None:
        if self.direction not in ("forward", "reverse"):
            raise DsaError(f"Phase 1 KL direction must be 'forward' or 'reverse', got {self.direction!r}")
        if self.weighting not in ("count", "uniform"):
            raise DsaError(f"Phase 1 weighting must be 'count' or 'uniform', got {self.weighting!r}")
        if self.epochs is not None and self.epochs < 0:
            raise DsaError("epochs must be ≥ 0 (or None to choose on validation data)")
        if self.max_epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise DsaError("max_epochs and batch_size must be ≥ 1 and lr > 0")


@dataclass
class Phase2Config:
    lr: float = 5e-5
    weight_decay: float = 0.01
    batch_size: int = 16
    epochs: int = 1
    min_pair_size: int = 10
    operator_min_size: int = 1
    target_smoothing: float = 1e-3
    n_levels: int = quantile.DEFAULT_N_LEVELS
    guard: bool = True
    seed: int = 0

    def check(self) -> None:
        if self.epochs < 0 or self.min_pair_size < 1 or self.batch_size < 1 or self.lr <= 0:
            raise DsaError("Phase 2 needs epochs ≥ 0, min_pair_size ≥ 1, batch_size ≥ 1 and lr > 0")


def _smooth(p: torch.Tensor, eps: float) -> torch.Tensor:
    return (1 - eps) * p + eps / p.shape[-1]


def kl_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row (natural log, ``0 log 0 = 0``); q must be positive where p is."""
    return torch.where(p > 0, p * (torch.log(p.clamp_min(1e-30)) - torch.log(q.clamp_min(1e-30))), 0.0).sum(-1)


def phase1_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, cfg: Phase1Config) -> torch.Tensor:
    """Phase 1 loss of some subgroups: ``Σ weights · KL`` (a sum; ``weights`` already normalised by the batch)."""
    if cfg.direction == "forward":
        per = kl_rows(target, pred)
    else:
        per = kl_rows(pred, _smooth(target, cfg.target_smoothing))
    return (per * weights).sum()


def validation_ce(model, val_prompt_idx: np.ndarray, val_counts: np.ndarray) -> float:
    """Mean cross-entropy per held-out respondent: -Σ counts·log p / Σ counts.

    One batched prediction pass (:meth:`OptionModel.predict`), split over the
    processes under ``accelerate launch`` (:func:`dsalib.engine.predict_rows`).
    """
    from .engine import predict_rows  # the engine imports transformers: only when training

    p = predict_rows(model, np.asarray(val_prompt_idx)).double().cpu().numpy()
    return float(-(val_counts * np.log(np.clip(p, 1e-12, None))).sum() / val_counts.sum())


def _weights(n: np.ndarray, scheme: str) -> np.ndarray:
    return n.astype(float) if scheme == "count" else np.ones(len(n))


def weighted_batches(weights: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[list[tuple[int, float]]]:
    """One epoch's batches for :func:`dsalib.engine.train_loop`: a permutation of ``range(len(weights))`` cut
    into batches of ``batch_size``; each item is ``(position, weight / Σ weights of its batch)``.

    The division by the whole batch's weight sum happens here, before
    ``train_loop`` splits the batch over processes, so a loss that sums
    ``weight · loss_i`` over its items is the batch's weighted mean on one
    process and on N (the loss contract of ``train_loop``).
    """
    order = rng.permutation(len(weights))
    out = []
    for start in range(0, len(order), batch_size):
        b = order[start:start + batch_size]
        total = float(weights[b].sum())
        if total <= 0:
            raise DsaError("a training batch has zero total weight; every item needs a positive weight")
        out.append([(int(i), float(weights[i]) / total) for i in b])
    return out


def _split_items(items, device) -> tuple[np.ndarray, torch.Tensor]:
    pos = np.array([i for i, _ in items], dtype=np.int64)
    w = torch.tensor([w for _, w in items], dtype=torch.float32, device=device)
    return pos, w


def phase1_loss_fn(prompt_idx: np.ndarray, dist: np.ndarray, cfg: Phase1Config):
    """``loss_fn(model, items)`` for ``train_loop``: :func:`phase1_loss` of the items' subgroups.

    Items come from :func:`weighted_batches` over the training subgroups
    (weights by ``cfg.weighting``): the loss of a batch is its weighted mean
    KL, and the loss of a share of the batch is that share's part of it.
    """
    def loss_fn(model, items):
        pos, w = _split_items(items, model.device)
        pred = model.probs(torch.as_tensor(prompt_idx[pos]), grad=True)
        tgt = torch.as_tensor(dist[pos], dtype=pred.dtype, device=pred.device)
        return phase1_loss(pred, tgt, w.to(pred.dtype), cfg)

    return loss_fn


@dataclass
class Phase1Report:
    epochs: int
    selected_on_validation: bool
    val_ce: list = field(default_factory=list)  # before training, then after each epoch (with selection)
    train_loss: list = field(default_factory=list)  # mean batch loss per epoch
    config: dict = field(default_factory=dict)


def run_phase1(model, train: SubgroupTable, prompt_index, cfg: Phase1Config = Phase1Config(),
               val: SubgroupTable | None = None, epochs: int | None = None, progress: bool | None = None
               ) -> Phase1Report:
    """Phase 1 on ``train``; ``prompt_index(keys) -> prompt positions`` in the model's cache.

    With ``val`` (a validation table) the model trains for up to
    ``cfg.max_epochs``, stops after ``cfg.patience`` epochs without a
    validation cross-entropy lower by more than 1e-6, and is left at its best
    epoch (possibly 0: the initial weights).  Without it, it trains for
    ``epochs`` (default ``cfg.epochs``) epochs.  Runs on
    :func:`dsalib.engine.train_loop`, so it is data-parallel under
    ``accelerate launch``.
    """
    from .engine import train_loop

    cfg.check()
    if train.n_subgroups == 0:
        raise DsaError("the training sample has no subgroup with respondents")
    idx = np.asarray(prompt_index(train.keys))
    weights = _weights(train.n, cfg.weighting)
    rng = np.random.default_rng(cfg.seed)  # one permutation per epoch, drawn in epoch order
    report = Phase1Report(epochs=0, selected_on_validation=val is not None, config=asdict(cfg))
    loop = dict(lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed, progress=progress, desc="phase 1")
    batches = lambda epoch: weighted_batches(weights, cfg.batch_size, rng)
    loss_fn = phase1_loss_fn(idx, train.dist, cfg)
    if val is None:
        n_epochs = cfg.epochs if epochs is None else epochs
        if n_epochs is None:
            raise DsaError("Phase 1 needs a fixed number of epochs or a validation table to choose it")
        result = train_loop(model, batches, loss_fn, epochs=int(n_epochs), **loop)
        report.train_loss = result.epoch_loss
        report.epochs = int(n_epochs)
        return report
    if val.n_subgroups == 0:
        raise DsaError("the validation table is empty; use a larger training sample or a fixed number of epochs")
    val_idx = np.asarray(prompt_index(val.keys))
    result = train_loop(model, batches, loss_fn, epochs=cfg.max_epochs,
                        eval_fn=lambda m: validation_ce(m, val_idx, val.counts), eval_initial=True,
                        min_improvement=1e-6, patience=cfg.patience, restore_best=True, **loop)
    report.val_ce = result.eval_history
    report.train_loss = result.epoch_loss
    report.epochs = int(result.best_epoch)
    return report


@dataclass
class Phase2Report:
    """What one Phase 2 run did (whether the method keeps it is decided by its caller)."""

    pairs: int
    attribute_changes: int
    operator_pairs: int
    steps: int = 0
    val_ce_before: float | None = None
    val_ce_after: float | None = None
    note: str = ""
    config: dict = field(default_factory=dict)


def phase2_loss_fn(prompt_idx: np.ndarray, ref: np.ndarray, small: np.ndarray, attr: np.ndarray,
                   keys: np.ndarray, operators: dict, cfg: Phase2Config):
    """``loss_fn(model, items)`` for ``train_loop``: Phase 2's KL of the items' pairs (weights ``1/len(batch)``).

    Item ``(i, w)`` is pair ``i``: the reference subgroup ``ref[i]``'s current
    prediction (detached) mapped through the operator of the pair's attribute
    change is the target for ``small[i]``; the loss is ``Σ w · KL(P(small) ||
    target)`` over the items, so a batch's loss is the mean over its pairs.
    """
    def loss_fn(model, items):
        pos, w = _split_items(items, model.device)
        with torch.no_grad():
            p_ref = model.probs(torch.as_tensor(prompt_idx[ref[pos]]), grad=False).double().cpu().numpy()
        targets = np.stack([
            operators[(int(k), int(keys[r, k]), int(keys[s, k]))].apply(p)
            for p, r, s, k in zip(p_ref, ref[pos], small[pos], attr[pos])
        ])
        p_small = model.probs(torch.as_tensor(prompt_idx[small[pos]]), grad=True)
        tgt = _smooth(torch.as_tensor(targets, dtype=p_small.dtype, device=p_small.device), cfg.target_smoothing)
        return (kl_rows(p_small, tgt) * w.to(p_small.dtype)).sum()

    return loss_fn


def phase2_pairs(model, train: SubgroupTable, prompt_idx: np.ndarray, pairs, op_pairs, cfg: Phase2Config):
    """Phase 2's oriented training pairs and operators: ``(ref, small, attribute, operators)``.

    ``ref``/``small``: the larger/smaller subgroup (row of ``train``) of each
    training pair; ``operators``: the quantile-mapping operator of every
    attribute change, estimated from the model's current predictions of all
    training subgroups (one batched pass, shared by the processes).
    """
    from .engine import predict_rows

    p1 = predict_rows(model, prompt_idx).double().cpu().numpy()
    levels = quantile.quantile_levels(cfg.n_levels)
    operators = quantile.estimate_operators(p1, train.keys, op_pairs, levels=levels)
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    big_is_a = train.n[a] >= train.n[b]
    ref = np.where(big_is_a, a, b)
    small = np.where(big_is_a, b, a)
    return ref, small, pairs["attribute"].to_numpy(), operators


def run_phase2(model, train: SubgroupTable, prompt_index, cfg: Phase2Config = Phase2Config(),
               val: SubgroupTable | None = None, progress: bool | None = None) -> Phase2Report:
    """Phase 2 (distribution-shift alignment) after Phase 1; see the module docstring.

    With ``val`` the report holds the validation cross-entropy before and
    after Phase 2 (what the guard of :class:`dsalib.llm_methods.FineTuned`
    compares).  Runs on :func:`dsalib.engine.train_loop`.
    """
    from .engine import train_loop

    cfg.check()
    pairs = hamming1_pairs(train, cfg.min_pair_size)
    op_pairs = hamming1_pairs(train, cfg.operator_min_size)
    report = Phase2Report(pairs=len(pairs), attribute_changes=0, operator_pairs=len(op_pairs), config=asdict(cfg))
    if len(pairs) == 0:
        report.note = (
            f"no pair of training subgroups at Hamming distance 1 has ≥ {cfg.min_pair_size} respondents "
            "in both; Phase 2 was skipped and the model is the Phase 1 model. Lower min_pair_size or "
            "use a larger training sample to train Phase 2."
        )
        return report
    idx_all = np.asarray(prompt_index(train.keys))
    ref, small, attr, operators = phase2_pairs(model, train, idx_all, pairs, op_pairs, cfg)
    changes = {(int(k), int(train.keys[r, k]), int(train.keys[s, k])) for r, s, k in zip(ref, small, attr)}
    report.attribute_changes = len(changes)
    val_idx = np.asarray(prompt_index(val.keys)) if val is not None and val.n_subgroups else None
    if val_idx is not None:
        report.val_ce_before = validation_ce(model, val_idx, val.counts)
    rng = np.random.default_rng(cfg.seed)  # one permutation per epoch, drawn in epoch order
    result = train_loop(model, lambda epoch: weighted_batches(np.ones(len(ref)), cfg.batch_size, rng),
                        phase2_loss_fn(idx_all, ref, small, attr, train.keys, operators, cfg),
                        epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed,
                        progress=progress, desc="phase 2")
    report.steps = len(result.step_loss)
    if val_idx is not None:
        report.val_ce_after = validation_ce(model, val_idx, val.counts)
    return report
