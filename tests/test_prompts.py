import numpy as np
import pytest

from dsalib import prompts, surveys
from dsalib.errors import DsaError


def test_default_prompt_follows_appendix_b(ess9):
    table = surveys.subgroup_table(ess9, "imbgeco")
    key = table.keys[0]
    p = prompts.build_prompt(ess9, "imbgeco", key)
    # background answers in the questionnaire's wording
    for attr, level in zip(table.attributes, key):
        bq = ess9.background[attr]
        assert bq.wording in p and bq.levels[level].answer in p
    # then the core question with every option and its label, then the instruction and answer slot
    assert "the United Kingdom's economy" in p
    assert "A. 0 (Bad for the economy)" in p and "K. 10 (Good for the economy)" in p
    assert p.index("Q: What is your gender?") < p.index("Question:") < p.index("Answer with the letter")
    assert p.endswith("Answer:")


@pytest.mark.parametrize("template", prompts.TEMPLATES)
def test_every_template_has_the_same_content(ess9, template):
    key = [1, 3, 0, 2]
    p = prompts.build_prompt(ess9, "lrscale", key, template=template)
    assert p.endswith("Answer:")
    assert "0 means the left and 10 means the right" in p
    for attr, level in zip(ess9.default_background, key):
        assert ess9.background[attr].levels[level].answer in p
    assert "(A-K)" in p or "A to K" in p or "A-K" in p


def test_paraphrases_differ(ess9):
    texts = {t: prompts.build_prompt(ess9, "imbgeco", [0, 0, 0, 0], template=t) for t in prompts.PARAPHRASES}
    assert len(set(texts.values())) == len(prompts.PARAPHRASES)


def test_labels():
    assert prompts.option_labels(3) == ("A", "B", "C")
    assert prompts.option_labels(11, "digits")[-1] == "11"
    with pytest.raises(DsaError, match="unknown label scheme"):
        prompts.option_labels(3, "roman")
    with pytest.raises(DsaError, match="at most 26"):
        prompts.option_labels(27)


def test_build_prompts_for_a_table(ess9):
    table = surveys.subgroup_table(ess9, "imwbcnt")
    ps = prompts.build_prompts(ess9, "imwbcnt", table.keys[:5])
    assert len(ps) == 5 and len(set(ps)) == 5


def test_bad_prompt_input(ess9):
    with pytest.raises(DsaError, match="unknown prompt template"):
        prompts.build_prompt(ess9, "imbgeco", [0, 0, 0, 0], template="fancy")
    with pytest.raises(DsaError, match="key has 2 levels"):
        prompts.build_prompt(ess9, "imbgeco", [0, 0])
    with pytest.raises(DsaError, match="out of range"):
        prompts.build_prompt(ess9, "imbgeco", [0, 9, 0, 0])
    with pytest.raises(DsaError, match="no core question"):
        prompts.build_prompt(ess9, "happy", [0, 0, 0, 0])
