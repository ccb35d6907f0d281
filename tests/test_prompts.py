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


def _chat_tokenizer(add_bos: bool):
    from dsalib.lm import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    if add_bos:  # a tokenizer that adds BOS itself (as Llama's do)
        from tokenizers import processors

        tok._tokenizer.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", tok.bos_token_id)])
    return tok


@pytest.mark.parametrize("add_bos", [False, True])
def test_chat_template_wraps_the_prompt_and_keeps_the_answer_slot(ess9, add_bos):
    tok = _chat_tokenizer(add_bos)
    p = prompts.build_prompt(ess9, "imbgeco", [0, 0, 0, 0])
    chat = prompts.apply_chat_template(tok, p)
    assert chat.endswith("<|assistant|>\nAnswer:")
    assert "<|user|>\nThe following are a survey respondent's answers" in chat
    assert chat.count("Answer:") == 1  # the slot moved to the assistant's turn
    ids = tok(chat, add_special_tokens=True)["input_ids"]
    assert ids.count(tok.bos_token_id) == 1  # never a doubled beginning-of-sequence token


def test_chat_template_on_a_base_model_is_a_clear_error(ess9):
    from dsalib.lm import tiny_tokenizer

    with pytest.raises(DsaError, match="no chat template"):
        prompts.apply_chat_template(tiny_tokenizer(), prompts.build_prompt(ess9, "imbgeco", [0, 0, 0, 0]))
