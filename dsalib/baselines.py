"""Baselines that need no language model, and the common method interface.

Every method — statistical or LLM-based — follows one interface::

    method.fit(train: SubgroupTable, **context) -> method
    method.predict(keys: np.ndarray) -> np.ndarray   # (len(keys), K), rows sum to 1

``keys`` are level-index tuples (rows of ``SubgroupTable.keys``) and may name
subgroups absent from the training sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from . import metrics
from .errors import DsaError
from .surveys import SubgroupTable


class Method(Protocol):
    name: str

    def fit(self, train: SubgroupTable, **context) -> "Method": ...

    def predict(self, keys: np.ndarray) -> np.ndarray: ...


def _check_train(train: SubgroupTable) -> None:
    if train.n_subgroups == 0 or train.counts.sum() <= 0:
        raise DsaError(
            f"the training sample for '{train.question}' has no respondents; "
            "use a larger training size or other background attributes"
        )


def _check_keys(train: SubgroupTable, keys) -> np.ndarray:
    keys = np.asarray(keys, dtype=np.int64)
    if keys.ndim != 2 or keys.shape[1] != len(train.attributes):
        raise DsaError(
            f"keys must be an array of shape (subgroups, {len(train.attributes)}) "
            f"for attributes {train.attributes}, got shape {keys.shape}"
        )
    for j, levels in enumerate(train.levels):
        if keys.size and (keys[:, j].min() < 0 or keys[:, j].max() >= len(levels)):
            raise DsaError(f"keys hold a level index outside 0..{len(levels) - 1} for '{train.attributes[j]}'")
    return keys


@dataclass
class TrainingSample:
    """TS: each subgroup's answer distribution in the training sample.

    Fallback for a subgroup absent from the training sample (no respondent):
    the pooled answer distribution of the whole training sample (``"marginal"``).
    """

    name: str = "TS"
    fallback: str = "marginal"
    train: SubgroupTable | None = field(default=None, repr=False)

    def fit(self, train: SubgroupTable, **context) -> "TrainingSample":
        _check_train(train)
        if self.fallback != "marginal":
            raise DsaError(f"unknown TS fallback {self.fallback!r}; the only one is 'marginal'")
        self.train = train
        return self

    def predict(self, keys) -> np.ndarray:
        if self.train is None:
            raise DsaError("call fit() before predict()")
        keys = _check_keys(self.train, keys)
        counts, _ = self.train.lookup(keys)
        totals = counts.sum(axis=1, keepdims=True)
        out = np.where(totals > 0, counts / np.where(totals > 0, totals, 1), self.train.marginal)
        return out

    def absent(self, keys) -> np.ndarray:
        """Which keys have no training respondent (and so get the fallback)."""
        counts, _ = self.train.lookup(_check_keys(self.train, keys))
        return counts.sum(axis=1) <= 0


def noise_floor(truth: SubgroupTable, seed: int = 0, n_boot: int = 20, min_size: int = 10) -> pd.DataFrame:
    """How noisy the ground truth itself is.

    For every evaluated truth subgroup (≥ ``min_size`` respondents), draw
    ``n_boot`` bootstrap resamples of the same size from its distribution and
    average their error against it.  Returns the same columns as
    :func:`dsalib.metrics.evaluate`.
    """
    if n_boot < 1:
        raise DsaError("n_boot must be at least 1")
    rng = np.random.default_rng(seed)
    keep = truth.n >= min_size
    if not keep.any():
        raise DsaError(
            f"no subgroup of '{truth.question}' has ≥ {min_size} respondents in the truth "
            f"({truth.n_respondents} respondents); use a smaller training sample with the heldout truth, "
            "a lower min_size or fewer background attributes"
        )
    dist = truth.dist[keep]
    sizes = truth.n[keep]
    out = {"jsd": np.zeros(len(sizes)), "wd": np.zeros(len(sizes)), "wd_scaled": np.zeros(len(sizes))}
    for _ in range(n_boot):
        draws = np.stack([rng.multinomial(int(s), p / p.sum()) for s, p in zip(sizes, dist)]) / sizes[:, None]
        out["jsd"] += metrics.jsd(draws, dist) / n_boot
        out["wd"] += metrics.wd(draws, dist) / n_boot
        out["wd_scaled"] += metrics.wd_scaled(draws, dist) / n_boot
    return pd.DataFrame(
        {
            "subgroup": np.array(truth.subgroup_labels(), dtype=object)[keep],
            "n": sizes,
            **out,
        }
    )
