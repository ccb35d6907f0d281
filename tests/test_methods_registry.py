import pytest

from dsalib import methods
from dsalib.errors import ParameterError
from dsalib.experiments import EnhancementConfig


def test_statistical_methods_by_name():
    for name in methods.STATISTICAL:
        assert methods.make_method(name).name == name


def test_unknown_method_and_missing_model():
    with pytest.raises(ParameterError, match="unknown method 'DSA2'.*choose from"):
        methods.make_method("DSA2")
    with pytest.raises(ParameterError, match="needs a language model"):
        methods.make_method("DSA")


@pytest.mark.parametrize(
    "kwargs,message",
    [({"methods": ("TS", "Magic")}, "must be one of"), ({"modes": ["both"]}, "must be one of"),
     ({"n": 0}, "≥ 1"), ({"n": "500"}, "integer"), ({"seeds": ()}, "at least one")],
)
def test_enhancement_config_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ParameterError, match=message):
        EnhancementConfig(**kwargs)
