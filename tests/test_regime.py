"""The paper-regime study's tables (dsalib.regime): Phase 2's change against the TKFT with the same Phase 1."""

import pandas as pd
import pytest

from dsalib import config, regime, surveys
from dsalib.errors import ParameterError


def _rows():
    rows = []
    for seed in (0, 1):
        for mode in ("full", "heldout"):
            for m, v in [("TS", 0.01), ("MNL", 0.012), ("TKFT", 0.02), ("DSA", 0.018), ("DSA (no guard)", 0.03),
                         ("DSA-ratio", 0.021), ("TKFT (paper)", 0.05), ("DSA (paper)", 0.04), ("floor", 0.001)]:
                rep = None
                if m.startswith("DSA"):
                    rep = {"phase2": {"pairs": 12, "attribute_changes": 5, "steps": 1,
                                      "outcome": "rejected" if m == "DSA" and seed == 1 else "run"},
                           "phase1": {"epochs": 1 if "paper" in m else 4}}
                rows.append({"question": "q", "seed": seed, "truth_mode": mode, "method": m,
                             "jsd_mean": v + 0.001 * seed, "report": rep})
    res = pd.DataFrame(rows)
    return res.join(regime._phase2_columns(res))


def test_phase2_change_is_against_the_tkft_with_the_same_phase1():
    runs = regime.phase2_runs(_rows())
    got = runs[(runs.seed == 0) & (runs.truth_mode == "full")].set_index("method").phase2_change_jsd
    assert got["DSA"] == pytest.approx(-0.002) and got["DSA (no guard)"] == pytest.approx(0.01)
    assert got["DSA-ratio"] == pytest.approx(0.001)
    assert got["DSA (paper)"] == pytest.approx(-0.01)  # against TKFT (paper), not TKFT
    assert list(runs.method.unique()) == ["DSA", "DSA (no guard)", "DSA-ratio", "DSA (paper)"]
    p2 = regime.phase2_summary(runs).set_index(["truth_mode", "method"])
    assert p2.loc[("full", "DSA"), "phase2_run_share"] == 0.5 and p2.loc[("full", "DSA"), "lowered_share"] == 1.0
    assert p2.loc[("full", "DSA (no guard)"), "lowered_share"] == 0.0
    s = regime.summary(_rows())
    assert list(s[s.truth_mode == "full"].method) == [*regime.METHOD_ORDER, "floor"]
    assert s.set_index(["truth_mode", "method"]).loc[("full", "TS"), "jsd_mean"] == pytest.approx(0.0105)
    found = regime.findings(_rows(), runs, ["full", "heldout"])
    assert found["full_best"] == "TS" and found["heldout_DSA (paper)_change"] == pytest.approx(-0.01)


def test_variants_are_enhancement_configurations():
    cfg = config.DsaRegimeConfig(seeds=[0])
    variants = regime.variant_configs(cfg)
    by = {v.name: (c, names) for v, c, names in variants}
    assert by["selected"][0].methods == ["TS", "MNL", "TKFT", "DSA"] and by["selected"][0].phase2.guard
    assert not by["no guard"][0].phase2.guard and by["no guard"][0].methods == ["DSA"]
    assert by["paper"][0].phase1.epochs == 1 and not by["paper"][0].phase2.guard
    assert by["ratio"][0].phase2.operator == "ratio" and by["ratio"][0].phase2.reference == "phase1"
    assert by["paper"][1] == {"DSA": "DSA (paper)", "TKFT": "TKFT (paper)"}
    # the variants that share the study's Phase 1 train it with the same settings (so DSA reuses TKFT's Phase 1)
    assert by["selected"][0].phase1 == by["no guard"][0].phase1 == by["ratio"][0].phase1


def test_a_background_too_fine_for_the_regime_is_refused_before_any_work():
    cfg = config.DsaRegimeConfig(seeds=[0], n=600)
    survey = surveys.load_survey(cfg.dataset, questions=cfg.questions, background=cfg.background)
    with pytest.raises(ParameterError, match="training respondents per subgroup on average"):
        regime.check_regime(cfg, survey)
    with pytest.raises(ParameterError, match="model-based"):
        config.DsaRegimeConfig(baselines=["TS", "Direct"])
