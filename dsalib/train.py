"""Phase 1 (TKFT) and Phase 2 (DSA) training loops.

Both phases train an :class:`dsalib.engine.OptionModel` (by default only the
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
    evaluation truth is never used.

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
    smaller subgroup's prediction.  :class:`dsalib.llm_methods.FineTuned`
    keeps Phase 2 only if it does not raise the validation cross-entropy on
    the fit/validation split (``guard=True``); the report says whether it was
    kept.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from .progress import bar as tqdm

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
    if cfg.direction == "forward":
        per = kl_rows(target, pred)
    else:
        per = kl_rows(pred, _smooth(target, cfg.target_smoothing))
    return (per * weights).sum() / weights.sum()


def validation_ce(model, val_prompt_idx: np.ndarray, val_counts: np.ndarray) -> float:
    """Mean cross-entropy per held-out respondent: -Σ counts·log p / Σ counts."""
    with torch.no_grad():
        p = model.probs(torch.as_tensor(val_prompt_idx), grad=False).double().cpu().numpy()
    return float(-(val_counts * np.log(np.clip(p, 1e-12, None))).sum() / val_counts.sum())


def _weights(n: np.ndarray, scheme: str) -> np.ndarray:
    return n.astype(float) if scheme == "count" else np.ones(len(n))


def _run_epochs(model, prompt_idx, dist, weights, cfg: Phase1Config, epochs: int, rng, on_epoch=None):
    params = model.parameters_to_train()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses = []
    for epoch in tqdm(range(epochs), desc="phase 1 epochs", leave=False, disable=None):
        order = rng.permutation(len(prompt_idx))
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            b = order[start:start + cfg.batch_size]
            pred = model.probs(torch.as_tensor(prompt_idx[b]), grad=True)
            tgt = torch.as_tensor(dist[b], dtype=pred.dtype, device=pred.device)
            w = torch.as_tensor(weights[b], dtype=pred.dtype, device=pred.device)
            loss = phase1_loss(pred, tgt, w, cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        losses.append(total / len(order))
        if on_epoch is not None and on_epoch(epoch + 1):
            break
    return losses


@dataclass
class Phase1Report:
    epochs: int
    selected_on_validation: bool
    val_ce: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    config: dict = field(default_factory=dict)


def run_phase1(model, train: SubgroupTable, prompt_index, cfg: Phase1Config = Phase1Config(),
               val: SubgroupTable | None = None, epochs: int | None = None) -> Phase1Report:
    """Phase 1 on ``train``; ``prompt_index(keys) -> prompt positions`` in the model's cache.

    With ``val`` (a validation table) the model trains for up to
    ``cfg.max_epochs``, stops after ``cfg.patience`` epochs without a lower
    validation cross-entropy, and is left at its best epoch (possibly 0).
    Without it, it trains for ``epochs`` (default ``cfg.epochs``) epochs.
    """
    cfg.check()
    if train.n_subgroups == 0:
        raise DsaError("the training sample has no subgroup with respondents")
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    idx = prompt_index(train.keys)
    weights = _weights(train.n, cfg.weighting)
    report = Phase1Report(epochs=0, selected_on_validation=val is not None, config=asdict(cfg))
    if val is None:
        n_epochs = cfg.epochs if epochs is None else epochs
        if n_epochs is None:
            raise DsaError("Phase 1 needs a fixed number of epochs or a validation table to choose it")
        report.train_loss = _run_epochs(model, idx, train.dist, weights, cfg, n_epochs, rng)
        report.epochs = int(n_epochs)
        return report
    if val.n_subgroups == 0:
        raise DsaError("the validation table is empty; use a larger training sample or a fixed number of epochs")
    val_idx = prompt_index(val.keys)
    report.val_ce.append(validation_ce(model, val_idx, val.counts))
    best = {"epoch": 0, "ce": report.val_ce[0], "state": copy.deepcopy(model.state_dict())}

    def on_epoch(e):
        ce = validation_ce(model, val_idx, val.counts)
        report.val_ce.append(ce)
        if ce < best["ce"] - 1e-6:
            best.update(epoch=e, ce=ce, state=copy.deepcopy(model.state_dict()))
        return e - best["epoch"] >= cfg.patience

    report.train_loss = _run_epochs(model, idx, train.dist, weights, cfg, cfg.max_epochs, rng, on_epoch)
    model.load_state_dict(best["state"])
    report.epochs = int(best["epoch"])
    return report


@dataclass
class Phase2Report:
    pairs: int
    attribute_changes: int
    operator_pairs: int
    steps: int = 0
    kept: bool = True
    val_ce_before: float | None = None
    val_ce_after: float | None = None
    note: str = ""
    config: dict = field(default_factory=dict)


def run_phase2(model, train: SubgroupTable, prompt_index, cfg: Phase2Config = Phase2Config(),
               val: SubgroupTable | None = None) -> Phase2Report:
    """Phase 2 (distribution-shift alignment) after Phase 1; see the module docstring."""
    cfg.check()
    pairs = hamming1_pairs(train, cfg.min_pair_size)
    op_pairs = hamming1_pairs(train, cfg.operator_min_size)
    report = Phase2Report(pairs=len(pairs), attribute_changes=0, operator_pairs=len(op_pairs), config=asdict(cfg))
    if len(pairs) == 0:
        report.kept = False
        report.note = (
            f"no pair of training subgroups at Hamming distance 1 has ≥ {cfg.min_pair_size} respondents "
            "in both; Phase 2 was skipped and the model is the Phase 1 model. Lower min_pair_size or "
            "use a larger training sample to train Phase 2."
        )
        return report
    idx_all = prompt_index(train.keys)
    with torch.no_grad():
        p1 = model.probs(torch.as_tensor(idx_all), grad=False).double().cpu().numpy()
    levels = quantile.quantile_levels(cfg.n_levels)
    operators = quantile.estimate_operators(p1, train.keys, op_pairs, levels=levels)
    # orient every training pair: reference = larger subgroup, target = smaller
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    big_is_a = train.n[a] >= train.n[b]
    ref = np.where(big_is_a, a, b)
    small = np.where(big_is_a, b, a)
    attr = pairs["attribute"].to_numpy()
    changes = {(int(k), int(train.keys[r, k]), int(train.keys[s, k])) for r, s, k in zip(ref, small, attr)}
    report.attribute_changes = len(changes)
    val_idx = prompt_index(val.keys) if val is not None and val.n_subgroups else None
    if val_idx is not None:
        report.val_ce_before = validation_ce(model, val_idx, val.counts)
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.AdamW(model.parameters_to_train(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for _ in tqdm(range(cfg.epochs), desc="phase 2 epochs", leave=False, disable=None):
        order = rng.permutation(len(ref))
        for start in range(0, len(order), cfg.batch_size):
            bsel = order[start:start + cfg.batch_size]
            with torch.no_grad():
                p_ref = model.probs(torch.as_tensor(idx_all[ref[bsel]]), grad=False).double().cpu().numpy()
            targets = np.stack([
                operators[(int(k), int(train.keys[r, k]), int(train.keys[s, k]))].apply(p)
                for p, r, s, k in zip(p_ref, ref[bsel], small[bsel], attr[bsel])
            ])
            p_small = model.probs(torch.as_tensor(idx_all[small[bsel]]), grad=True)
            tgt = _smooth(torch.as_tensor(targets, dtype=p_small.dtype, device=p_small.device), cfg.target_smoothing)
            loss = kl_rows(p_small, tgt).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            report.steps += 1
    if val_idx is not None:
        report.val_ce_after = validation_ce(model, val_idx, val.counts)
    return report
