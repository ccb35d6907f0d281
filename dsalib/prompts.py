"""Prompt templates and option labels.

Prompts follow the DSA paper's appendix B: the background answers in the
questionnaire's own wording, then the core question with its options, then an
instruction to answer with the option's label.  The prompt ends with the answer
slot (``answer_suffix``, default ``"Answer:"``); the model's next token after
it is read as the answer (see :class:`dsalib.lm.OptionRule`).

Templates:

- ``default``: the paper's layout (question/answer pairs, then the question).
- ``persona`` (the PE baseline): the background written as a persona
  ("You are ...") with an instruction to answer as that person.
- ``para1`` .. ``para4``: four paraphrased framings of ``default`` (different
  headings, order of instruction and options, wording of the instruction) for
  the prompt-consistency experiment.  They change how the prompt is phrased,
  never what it says.

Chat template (off by default): instruct models can be prompted through their
tokenizer's chat template (:func:`apply_chat_template`): the prompt without its
answer slot is the user's turn, the assistant's turn starts with the answer
slot.  The paper's appendix B prompt, as plain text, is the default.

Labels: ``letters`` (A, B, C, ...; one token each with or without a leading
space in the tokenizers we use) is the default, because digit labels on a
0-10 scale need "10", which tokenizers split into two tokens.  ``digits``
(1..K) is available with exact multi-token scoring.
"""

from __future__ import annotations

import string
from typing import Sequence

import numpy as np

from .errors import DsaError
from .surveys import Survey

LABEL_SCHEMES = ("letters", "digits")
TEMPLATES = ("default", "persona", "para1", "para2", "para3", "para4")
PARAPHRASES = ("default", "para1", "para2", "para3", "para4")


def option_labels(n_options: int, scheme: str = "letters") -> tuple[str, ...]:
    """The label of each option under a label scheme."""
    if scheme == "letters":
        if n_options > 26:
            raise DsaError(f"letter labels support at most 26 options, the question has {n_options}")
        return tuple(string.ascii_uppercase[:n_options])
    if scheme == "digits":
        return tuple(str(i + 1) for i in range(n_options))
    raise DsaError(f"unknown label scheme {scheme!r}; choose one of {LABEL_SCHEMES}")


def _background_pairs(survey: Survey, attributes: Sequence[str], key: Sequence[int]) -> list[tuple[str, str]]:
    pairs = []
    for attr, level in zip(attributes, key):
        bq = survey.background[attr]
        if not 0 <= int(level) < len(bq.levels):
            raise DsaError(f"level index {level} out of range for background '{attr}' ({len(bq.levels)} levels)")
        pairs.append((bq.wording, bq.levels[int(level)].answer))
    return pairs


def _options_block(labels: Sequence[str], options: Sequence[str], sep: str = ". ") -> str:
    return "\n".join(f"{lab}{sep}{text}" for lab, text in zip(labels, options))


def build_prompt(
    survey: Survey,
    question: str,
    key: Sequence[int],
    attributes: Sequence[str] | None = None,
    template: str = "default",
    labels: str = "letters",
    answer_suffix: str = "Answer:",
) -> str:
    """The prompt for one subgroup (``key``: level index per attribute)."""
    cq = survey.question(question)
    attrs = survey.check_background(attributes)
    if len(key) != len(attrs):
        raise DsaError(f"key has {len(key)} levels but there are {len(attrs)} attributes {attrs}")
    if template not in TEMPLATES:
        raise DsaError(f"unknown prompt template {template!r}; choose one of {TEMPLATES}")
    labs = option_labels(cq.n_options, labels)
    texts = [o.label for o in cq.options]
    bg = _background_pairs(survey, attrs, key)
    first, last = labs[0], labs[-1]
    if template == "default":
        lines = ["The following are a survey respondent's answers to background questions."]
        lines += [f"Q: {q}\nA: {a}" for q, a in bg]
        lines += ["", "Now answer the next survey question as this respondent would.",
                  f"Question: {cq.wording}", _options_block(labs, texts),
                  f"Answer with the letter of one option ({first}-{last})." if labels == "letters"
                  else f"Answer with the number of one option ({first}-{last}).",
                  answer_suffix]
    elif template == "persona":
        traits = "\n".join(f"- {q} {a}" for q, a in bg)
        lines = ["Imagine you are a real person taking part in a survey. This is who you are:", traits,
                 "", "Stay in character and answer the question as this person honestly would.",
                 f"Question: {cq.wording}", _options_block(labs, texts),
                 f"Reply with the label of your answer ({first}-{last}).", answer_suffix]
    elif template == "para1":
        lines = ["Respondent profile:"] + [f"* {q} -> {a}" for q, a in bg]
        lines += ["", f"Survey item: {cq.wording}", "Response options:", _options_block(labs, texts, ") "),
                  f"Which option would this respondent choose? Give only its label ({first}-{last}).",
                  answer_suffix]
    elif template == "para2":
        lines = [f"Choose one option ({first}-{last}) the way the person described below would answer.",
                 "", f"Question: {cq.wording}", _options_block(labs, texts), "", "About the person:"]
        lines += [f"{q} {a}" for q, a in bg]
        lines += ["", answer_suffix]
    elif template == "para3":
        lines = ["A participant in a social survey gave these answers about themselves:"]
        lines += [f'When asked "{q}", they answered "{a}".' for q, a in bg]
        lines += ["", f'They were then asked: "{cq.wording}"', "The possible answers were:",
                  _options_block(labs, texts, ": "),
                  f"Predict their answer and respond with one label from {first} to {last}.", answer_suffix]
    else:  # para4
        lines = ["### Background of the respondent"] + [f"{q} {a}" for q, a in bg]
        lines += ["", "### Question", cq.wording, "", "### Options", _options_block(labs, texts), "",
                  f"### Instruction\nSelect the option this respondent is most likely to pick; answer {first}-{last} only.",
                  answer_suffix]
    return "\n".join(lines)


def build_prompts(
    survey: Survey,
    question: str,
    keys: np.ndarray,
    attributes: Sequence[str] | None = None,
    template: str = "default",
    labels: str = "letters",
    answer_suffix: str = "Answer:",
) -> list[str]:
    """One prompt per subgroup key (rows of ``SubgroupTable.keys``)."""
    return [
        build_prompt(survey, question, k, attributes, template, labels, answer_suffix)
        for k in np.asarray(keys).tolist()
    ]


def apply_chat_template(tokenizer, prompt: str, answer_suffix: str = "Answer:", **template_kwargs) -> str:
    """``prompt`` wrapped in the tokenizer's chat template, for instruct models.

    The prompt without its answer slot (``answer_suffix``) becomes the user's
    message; the generation prompt (the assistant's turn) follows, then the
    answer slot, so the next token is still read after ``answer_suffix``.
    ``template_kwargs`` go to ``tokenizer.apply_chat_template`` (e.g.
    ``enable_thinking=False`` for Qwen3).  A beginning-of-sequence token that
    the template writes is dropped when the tokenizer adds one itself, so it is
    not doubled when the text is tokenised.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise DsaError(
            f"the tokenizer of this model has no chat template ({type(tokenizer).__name__}); "
            "it is probably a base model: run without the chat template (chat_template=False)"
        )
    if answer_suffix and not prompt.endswith(answer_suffix):
        raise DsaError(f"the prompt does not end with the answer slot {answer_suffix!r}; build it with that suffix")
    body = prompt[: len(prompt) - len(answer_suffix)].rstrip() if answer_suffix else prompt
    text = tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                         add_generation_prompt=True, **template_kwargs)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        probe = tokenizer("x", add_special_tokens=True)["input_ids"]
        if probe and probe[0] == tokenizer.bos_token_id:
            text = text[len(bos):]
    return text + answer_suffix
