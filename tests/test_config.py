"""The typed study configurations (dsalib.config): every bad parameter is a clear error before any work."""

import pytest

from dsalib import config
from dsalib.config import AblationsConfig, EnhancementConfig, GenerationConfig, RobustnessConfig
from dsalib.errors import ParameterError
from dsalib.train import Phase1Config


@pytest.mark.parametrize("params, message", [
    ({"min_eval_size": -5}, r"'min_eval_size'.*≥ 1"),  # -p min_eval_size -5
    ({"min_eval_size": 0}, r"'min_eval_size'.*≥ 1"),
    ({"seeds": [0.5]}, r"'seeds\[0\]'.*integer"),  # -y "seeds: [0.5]"
    ({"seeds": [True]}, r"'seeds\[0\]'.*integer"),
    ({"seeds": [-1]}, r"'seeds\[0\]'.*≥ 0"),
    ({"seeds": None}, r"'seeds'.*not be None"),
    ({"seeds": 3}, r"'seeds'.*must be a list.*-y \"seeds: \[3\]\""),  # -p seeds 3
    ({"seeds": [0, 0]}, r"'seeds'.*twice"),
    ({"questions": "imbgeco"}, r"'questions'.*list, got the text 'imbgeco'.*-y"),  # -p questions imbgeco
    ({"methods": "TS"}, r"'methods'.*-y"),
    ({"modes": []}, r"'modes'.*at least one"),  # -y "modes: []"
    ({"modes": ["full", "both"]}, r"'modes\[1\]'.*one of full, heldout"),
    ({"phase1": {"epochz": 1}}, r"'phase1'.*unknown field.*epochz"),  # -y "phase1: {epochz: 1}"
    ({"phase2": {"min_pair_sizes": 1}}, r"'phase2'.*unknown field"),
    ({"phase1": {"seed": 3}}, r"'phase1'.*seed.*seeds"),
    ({"phase1": {"lr": -1.0}}, r"'phase1'.*lr > 0"),
    ({"phase1": {"epochs": 1.5}}, r"'phase1.epochs'.*integer"),
    ({"methods": ["TS", "Magic"]}, r"'methods\[1\]'.*one of"),
    ({"template": "nope"}, r"'template'.*one of"),
    ({"strategy": "half"}, r"'strategy'.*one of last_layer, lora, full"),
    ({"n": 0}, r"'n'.*≥ 1"),
    ({"n": "500"}, r"'n'.*integer"),
    ({"n": 500.0}, r"'n'.*integer"),
    ({"source": "web"}, r"'source'.*one of"),
    ({"seedz": [0]}, r"unknown parameter\(s\) \['seedz'\].*enhancement"),
])
def test_bad_enhancement_parameters_are_clear_errors(params, message):
    with pytest.raises(ParameterError, match=message):
        config.from_params("enhancement", params)


def test_defaults_are_filled_in_and_equal():
    a = EnhancementConfig()
    assert a == EnhancementConfig(phase1={}) == EnhancementConfig(phase1={"lr": 5e-5})
    assert a == config.from_params("enhancement", {}) == config.from_params("enhancement", a.to_params())
    assert isinstance(a.phase1, Phase1Config) and a.phase1.max_epochs == 30
    assert a.to_params()["phase1"]["max_epochs"] == 30 and "seed" not in a.to_params()["phase1"]
    c = EnhancementConfig(seeds=(0, 1), questions=("imbgeco",), phase1={"lr": "1e-3", "epochs": 2})
    assert c.seeds == [0, 1] and c.questions == ["imbgeco"]  # tuples from the API become lists
    assert c.phase1.lr == 1e-3 and c.phase1.epochs == 2  # YAML reads 1e-3 as text; a number is what it means
    assert config.TheoremConfig(effect_scale=2).effect_scale == 2.0 and isinstance(
        config.TheoremConfig(effect_scale=2).effect_scale, float)


def test_replace_is_checked_again():
    with pytest.raises(ParameterError, match="'n'"):
        EnhancementConfig().replace(n=-1)


def test_study_specific_checks():
    with pytest.raises(ParameterError, match="also training questions"):
        GenerationConfig(test_questions=["natheal"])
    with pytest.raises(ParameterError, match="both held out and excluded"):
        GenerationConfig(excluded_levels=["Independent"])
    with pytest.raises(ParameterError, match=r"'methods\[0\]'.*one of Direct"):
        GenerationConfig(methods=["TS"])
    with pytest.raises(ParameterError, match="TS is the reference"):
        RobustnessConfig(methods=["TS", "DSA"])
    with pytest.raises(ParameterError, match="PE is the persona"):
        RobustnessConfig(prompt_methods=["PE"])
    with pytest.raises(ParameterError, match="two or more"):
        RobustnessConfig(templates=["default"])
    with pytest.raises(ParameterError, match="must not set epochs"):
        AblationsConfig(phase1={"epochs": 2})
    with pytest.raises(ParameterError, match="must also be in"):
        config.UnseenBackgroundsConfig(methods=["TS"], figure_methods=["DSA"])
    with pytest.raises(ParameterError, match="increasing"):
        config.UnseenBackgroundsConfig(size_bins=[20, 10])
    with pytest.raises(ParameterError, match="at least 2"):
        config.DataEfficiencyConfig(ts_sizes=[100])
    with pytest.raises(ParameterError, match="unknown study"):
        config.from_params("nope", {})


def test_protocol_configs_of_the_studies_share_the_enhancement_settings():
    rob = RobustnessConfig(n=300, phase1={"lr": 1e-3}, methods=["DSA"])
    run = rob.run_config(template="para1")
    assert isinstance(run, EnhancementConfig) and type(run) is EnhancementConfig
    assert run.methods == ["TS", "DSA"] and run.template == "para1" and run.n == 300 and run.phase1.lr == 1e-3
    abl = AblationsConfig(fixed_epochs=2, fixed_lr=0.01)
    fixed = abl.run_config(strategy="lora", fixed=True)
    assert fixed.phase1.epochs == 2 and fixed.phase1.lr == 0.01 and fixed.strategy == "lora"
    assert abl.run_config().phase1.epochs is None and abl.run_config().questions == abl.subset_questions
    assert abl.run_config(subset=False).seeds == abl.seeds
    de = config.DataEfficiencyConfig(n=250)
    assert de.enhancement() == EnhancementConfig(n=250)


def test_placement_and_new_study_parameters_are_checked():
    with pytest.raises(ParameterError, match="device_map.*must be one of"):
        config.from_params("enhancement", {"device_map": "cuda:0"})
    with pytest.raises(ParameterError, match="prefix_batch_size.*≥ 1"):
        config.from_params("generation", {"prefix_batch_size": 0})
    with pytest.raises(ParameterError, match="'n'.*one of sizes"):
        config.from_params("cross_question", {"n": 77})
    with pytest.raises(ParameterError, match="paper_phase1.*fix epochs"):
        config.from_params("dsa_regime", {"paper_phase1": {"epochs": None}})
