"""TKFT and DSA on real survey data with the embedded SmolLM2 model (slow: loads a 135M model)."""

import pytest

from dsalib import llm_methods as L, metrics, surveys
from dsalib.train import Phase1Config, Phase2Config


@pytest.mark.slow
def test_tkft_and_dsa_lower_the_error_of_direct(ess9):
    lm = L.LanguageModel.load("smollm2-135m")
    split = surveys.enhancement_split(ess9, "imbgeco", 500, 0)
    keys = split.truth.keys

    def err(method):
        return metrics.summarize(metrics.evaluate(method.fit(split.train).predict(keys), split.truth))["jsd_mean"]

    direct = err(L.Direct(lm, ess9))
    cfg1 = Phase1Config(lr=5e-4, epochs=3)
    tkft = err(L.tkft(lm, ess9, phase1_config=cfg1))
    dsa_method = L.dsa(lm, ess9, phase1_config=cfg1, phase2_config=Phase2Config(min_pair_size=5))
    dsa = err(dsa_method)
    assert tkft < direct and dsa < direct, (direct, tkft, dsa)
    assert dsa_method.report["phase2"]["pairs"] > 0
