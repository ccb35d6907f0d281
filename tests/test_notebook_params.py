"""The parameter check every study notebook runs first (dsalib.notebook_params)."""

import pytest

from dsalib import notebook_params
from dsalib.errors import ParameterError

STUDIES = ["ablations", "data_efficiency", "enhancement", "generation", "robustness", "theorem", "unseen_backgrounds"]


def _given(study, **override):
    defaults = notebook_params.declared_defaults(study)
    before = {"np", "pd"}
    ns = {"np": None, "pd": None, **defaults, **override}
    return notebook_params.given_parameters(study, ns, before)


@pytest.mark.parametrize("study", STUDIES)
def test_every_notebook_declares_output_dir_and_accepts_its_defaults(study):
    defaults = notebook_params.declared_defaults(study)
    assert "output_dir" in defaults and defaults["output_dir"].startswith(f"outputs/{study}/")
    assert _given(study) == defaults


def test_unknown_missing_and_text_for_a_list_are_errors():
    with pytest.raises(ParameterError, match=r"unknown parameter\(s\) \['seedz'\].*enhancement"):
        _given("enhancement", seedz=[1])
    with pytest.raises(ParameterError, match="must be a list, got the text.*-y"):
        _given("enhancement", methods='["TS", "MNL"]')  # what papermill -p passes
    with pytest.raises(ParameterError, match="must be a mapping"):
        _given("enhancement", phase1="{epochs: 1}")
    defaults = notebook_params.declared_defaults("enhancement")
    ns = {k: v for k, v in defaults.items() if k != "n"}
    with pytest.raises(ParameterError, match=r"\['n'\].*not defined"):
        notebook_params.given_parameters("enhancement", ns, set())
    with pytest.raises(ParameterError, match="no notebook"):
        notebook_params.declared_defaults("nope")
    assert _given("enhancement", methods=["TS"])["methods"] == ["TS"]
