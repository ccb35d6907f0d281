"""Every study notebook's parameters cell declares exactly its configuration's fields, with the same defaults."""

import pytest

from dsalib import config, notebook_params
from dsalib.errors import ParameterError

STUDIES = ["ablations", "cross_question", "data_efficiency", "dsa_regime", "enhancement", "generation", "phase2_check", "robustness", "summary",
           "theorem", "unseen_backgrounds"]


def test_every_study_has_a_configuration():
    assert sorted(config.STUDIES) == STUDIES
    assert sorted(p.stem for p in notebook_params.NOTEBOOKS.glob("*.ipynb")) == STUDIES


@pytest.mark.parametrize("study", STUDIES)
def test_parameters_cell_matches_the_configuration(study):
    declared = notebook_params.declared_defaults(study)
    cls = config.config_class(study)
    defaults = cls().to_params()
    assert list(declared) and set(declared) == set(defaults)
    # the cell's values give the class's defaults (phase1 = {} is Phase1Config's defaults)
    assert cls.from_params(declared) == cls()
    assert declared["output_dir"] is None  # ad-hoc runs write under runs/, never into the committed outputs/
    ns = {"np": None, **declared}
    assert config.from_notebook(study, ns, {"np"}).to_params() == defaults


def test_from_notebook_rejects_unknown_and_misspelt_names():
    declared = notebook_params.declared_defaults("enhancement")
    with pytest.raises(ParameterError, match=r"unknown parameter\(s\) \['seedz'\].*enhancement"):
        config.from_notebook("enhancement", {**declared, "seedz": [1]}, set())
    with pytest.raises(ParameterError, match="must be a list, got the text.*-y"):
        config.from_notebook("enhancement", {**declared, "methods": '["TS", "MNL"]'}, set())  # what papermill -p passes
    with pytest.raises(ParameterError, match="must be a mapping"):
        config.from_notebook("enhancement", {**declared, "phase1": "{epochs: 1}"}, set())
    with pytest.raises(ParameterError, match="no notebook"):
        notebook_params.declared_defaults("nope")
    # names defined before the parameters cell and private names are not parameters
    cfg = config.from_notebook("enhancement", {"pd": None, "_x": 1, **declared, "methods": ["TS"]}, {"pd"})
    assert cfg.methods == ["TS"]
