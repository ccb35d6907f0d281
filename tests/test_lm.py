"""Tests for dsalib.lm: option rules, option probabilities, model loading.

Everything except the two ``slow`` tests runs on the tiny model built from a
config (no download, no weights on disk).
"""

import json

import numpy as np
import pytest
import torch

from dsalib import lm
from dsalib.errors import DsaError
from dsalib.lm import (
    LabelTokenError,
    ModelNotFoundError,
    NonFiniteLogitsError,
    OptionRule,
    PromptError,
    build_tiny_model,
    option_probs,
)

LETTERS11 = OptionRule.letters(11)
DIGITS11 = OptionRule(labels=tuple(str(i) for i in range(11)), leading_space=False, scoring="multi_token")


pytestmark = pytest.mark.usefixtures("one_torch_thread")

SURVEY_PROMPT = """Example answer format: 'Answer: C'.
The following person took part in a survey in Great Britain.
Q: What is your gender? A: Female
Q: How old are you? A: 45-59
Q: How many years of education have you completed? A: 12-15 years
Question: Would you say it is generally bad or good for the United Kingdom's economy that people come to live here from other countries?
A. 0 (Bad for the economy)
B. 1
C. 2
D. 3
E. 4
F. 5
G. 6
H. 7
I. 8
J. 9
K. 10 (Good for the economy)
Answer with the letter of one option (A-K).
Answer:"""


def digit_prompt():
    """SURVEY_PROMPT with options numbered 0-10 instead of lettered A-K."""
    p = SURVEY_PROMPT.replace("letter", "number").replace("(A-K)", "(0-10)").replace("'Answer: C'", "'Answer: 2'")
    for k in range(11):
        p = p.replace(f"\n{chr(65 + k)}. ", f"\n{k}. ")
    return p


def make_prompts(n=6):
    return [
        f"Respondent {i}: age {20 + 7 * i}, region {'NSEW'[i % 4]}. " * (1 + i % 3)
        + "Question: How much do you agree?\nAnswer:"
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_model(seed=0)


# ----------------------------------------------------------------------------- tokenizer and rule


def test_tiny_tokenizer_behaves_like_real_ones(tiny):
    _, tok = tiny
    for letter in "ABCDEFGHIJK":
        assert len(tok.encode(" " + letter, add_special_tokens=False)) == 1
    for digit in "0123456789":
        assert len(tok.encode(digit, add_special_tokens=False)) == 1
    assert len(tok.encode("10", add_special_tokens=False)) == 2
    assert len(tok.encode(" 1", add_special_tokens=False)) == 2
    assert tok.decode(tok.encode("Answer: K", add_special_tokens=False)) == "Answer: K"


def test_rule_round_trips_and_validates():
    rule = OptionRule.letters(4, leading_space=False)
    assert rule.labels == ("A", "B", "C", "D") and rule.n_options == 4
    d = rule.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert OptionRule.from_dict(d) == rule
    assert OptionRule(labels=["x", "y"]).labels == ("x", "y")  # lists become tuples: hashable, frozen
    with pytest.raises(DsaError, match="distinct"):
        OptionRule(labels=("A", "A"))
    with pytest.raises(DsaError, match="scoring"):
        OptionRule(scoring="first_token")
    with pytest.raises(DsaError, match="non-empty"):
        OptionRule(labels=())


def test_resolve_letters_gives_one_token_each(tiny):
    _, tok = tiny
    res = LETTERS11.resolve(tok)
    assert len(res.single_ids) == 11 and len(set(res.single_ids)) == 11
    assert res.tokens[0] == ("ĠA",)


def test_label_that_is_not_one_token_is_refused_with_advice(tiny):
    _, tok = tiny
    rule = OptionRule(labels=tuple(str(i) for i in range(11)), leading_space=False)
    with pytest.raises(LabelTokenError) as err:
        rule.resolve(tok)
    msg = str(err.value)
    assert "'10'" in msg and "['1', '0']" in msg and "multi_token" in msg and "letters" in msg
    # " 1" is space + digit: not one token either
    with pytest.raises(LabelTokenError, match="'1'"):
        OptionRule(labels=("1", "2"), leading_space=True).resolve(tok)


def test_multi_token_rule_resolves_ten_to_two_tokens(tiny):
    _, tok = tiny
    res = DIGITS11.resolve(tok)
    assert [len(t) for t in res.token_ids] == [1] * 10 + [2]
    with pytest.raises(LabelTokenError):
        res.single_ids


# ----------------------------------------------------------------------------- option probabilities


def test_option_probs_shapes_and_normalisation(tiny):
    model, tok = tiny
    out = option_probs(model, tok, make_prompts(), LETTERS11, batch_size=4)
    assert out.probs.shape == (6, 11)
    np.testing.assert_allclose(out.probs.sum(axis=1), 1.0, atol=1e-9)
    assert np.all(out.option_mass > 0) and np.all(out.option_mass < 1)
    assert out.describe()["rule"] == LETTERS11.to_dict()
    # the tiny model is far from uniform, so the test below is meaningful
    assert out.probs.max() > 0.2


def test_option_probs_matches_a_single_unpadded_forward(tiny):
    """Left padding, batching and sorting do not change a prompt's result."""
    model, tok = tiny
    prompts = make_prompts()
    batched = option_probs(model, tok, prompts, LETTERS11, batch_size=4)
    ids = LETTERS11.resolve(tok).single_ids
    for i, p in enumerate(prompts):
        enc = tok(p, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0, -1]
        full = torch.softmax(logits.double(), -1)
        np.testing.assert_allclose(batched.probs[i], (full[ids] / full[ids].sum()).numpy(), atol=1e-5)
        np.testing.assert_allclose(batched.option_mass[i], float(full[ids].sum()), atol=1e-6)


def naive_sequence_log_prob(model, tok, prompt, label_ids):
    """log P(label tokens | prompt) by running prompt + label in one piece."""
    ids = tok(prompt)["input_ids"] + list(label_ids)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    n = len(label_ids)
    return sum(float(logp[len(ids) - n - 1 + j, label_ids[j]]) for j in range(n))


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_multi_token_scoring_is_exact(family):
    """KV-cache teacher forcing equals running each label in one piece; '1' excludes '10'."""
    model, tok = build_tiny_model(seed=1, family=family)
    prompts = make_prompts(3)
    out = option_probs(model, tok, prompts, DIGITS11, batch_size=2)
    res = DIGITS11.resolve(tok)
    for i, p in enumerate(prompts):
        seq = [np.exp(naive_sequence_log_prob(model, tok, p, t)) for t in res.token_ids]
        excl = list(seq)
        excl[1] = seq[1] - seq[10]  # "1" but not "10"
        np.testing.assert_allclose(out.option_mass[i], sum(excl), rtol=1e-5)
        np.testing.assert_allclose(out.probs[i], np.array(excl) / sum(excl), atol=1e-6)
        assert out.probs[i, 10] > 0


def test_prompt_without_the_answer_suffix_is_refused(tiny):
    model, tok = tiny
    with pytest.raises(PromptError, match=r"prompt 1 does not end with .*'Answer:'"):
        option_probs(model, tok, ["Q?\nAnswer:", "Q?\nAnswer: "], LETTERS11)


def test_prompt_longer_than_the_context_is_refused(tiny):
    model, tok = tiny
    limit = model.config.max_position_embeddings
    long_prompt = "x " * (limit + 10) + "Answer:"
    with pytest.raises(PromptError) as err:
        option_probs(model, tok, ["Q?\nAnswer:", long_prompt], LETTERS11)
    msg = str(err.value)
    n = len(tok(long_prompt)["input_ids"])
    assert "prompt 1" in msg and f"{n} tokens" in msg and f"{limit} tokens" in msg


def test_nan_logits_are_reported(tiny):
    model, tok = build_tiny_model(seed=0)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    with pytest.raises(NonFiniteLogitsError, match=r"NaN/inf logits for prompt\(s\) \[0, 1\]"):
        option_probs(model, tok, make_prompts(2), LETTERS11)


# ----------------------------------------------------------------------------- loading


def test_unknown_model_without_network_raises_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as err:
        lm.load_model("nonexistent-org/no-such-model-xyz")
    msg = str(err.value)
    assert "'nonexistent-org/no-such-model-xyz'" in msg
    assert "not in the local Hugging Face cache" in msg and "no network" in msg
    assert "local folder" in msg and "smollm2-135m" in msg
    assert isinstance(err.value, DsaError)


def test_load_tiny_and_local_folder(tmp_path):
    model, tok = lm.load_model("tiny", device="cpu")
    assert model.dtype == torch.float32 and not model.training
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = lm.load_model(str(tmp_path), device="cpu")
    a = option_probs(model, tok, make_prompts(2), LETTERS11).probs
    b = option_probs(again, tok2, make_prompts(2), LETTERS11).probs
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_models_cache_root(monkeypatch, tmp_path):
    monkeypatch.delenv("DSA_CACHE_DIR", raising=False)
    assert lm.models_cache_root().parts[-3:] == (".cache", "dsalib", "models")
    monkeypatch.setenv("DSA_CACHE_DIR", str(tmp_path))
    assert lm.models_cache_root() == tmp_path / "models"
    assert lm.models_cache_root(tmp_path / "x") == tmp_path / "x"


def test_embedded_conversion_is_atomic_and_cached(monkeypatch, tmp_path):
    calls = []

    def failing(name, out):
        (out / "model.safetensors").write_text("half written")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(lm, "_convert_gguf", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        lm._converted_embedded("smollm2-135m", tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither a final folder nor a temporary one is left

    def converting(name, out):
        calls.append(name)
        (out / "config.json").write_text("{}")
        return "fake source"

    monkeypatch.setattr(lm, "_convert_gguf", converting)
    folder = lm._converted_embedded("smollm2-135m", tmp_path)
    assert folder == tmp_path / "smollm2-135m" and (folder / "config.json").is_file()
    assert json.loads((folder / lm._CACHE_MARKER).read_text())["source"] == "fake source"
    lm._converted_embedded("smollm2-135m", tmp_path)
    assert calls == ["smollm2-135m"]  # converted once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2-135m"]


def test_stale_conversion_folders_are_cleaned_at_the_next_start(monkeypatch, tmp_path):
    import os
    import socket
    import subprocess
    import sys
    import time

    host = socket.gethostname()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead_pid = int(finished.stdout)  # a process that has exited

    def tmp_folder(name, owner=None, age=0.0):
        folder = tmp_path / f".smollm2-135m.tmp-{name}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 1000)
        if owner is not None:
            (folder / lm._OWNER_FILE).write_text(json.dumps(owner))
        for f in [*folder.iterdir(), folder]:
            os.utime(f, (time.time() - age, time.time() - age))
        return folder

    dead = tmp_folder("dead", {"host": host, "pid": dead_pid})
    live = tmp_folder("live", {"host": host, "pid": os.getpid()})  # a conversion running now
    foreign = tmp_folder("foreign", {"host": host + "-other", "pid": dead_pid})  # another machine, recent
    old = tmp_folder("old", None, age=lm.STALE_TMP_SECONDS + 60)  # no owner file, abandoned long ago
    unrelated = tmp_path / "smollm2-135m-notes"
    unrelated.mkdir()
    removed = lm.clean_stale_conversions(tmp_path)
    assert sorted(removed) == sorted([dead, old])
    assert live.is_dir() and foreign.is_dir() and unrelated.is_dir() and not dead.exists()
    # a conversion cleans stale folders first, and its own temporary folder names its process
    seen = {}

    def converting(name, out):
        seen["owner"] = json.loads((out / lm._OWNER_FILE).read_text())
        (out / "config.json").write_text("{}")
        return "fake source"

    tmp_folder("dead2", {"host": host, "pid": dead_pid})
    monkeypatch.setattr(lm, "_convert_gguf", converting)
    folder = lm._converted_embedded("smollm2-135m", tmp_path)
    assert seen["owner"] == {"host": host, "pid": os.getpid()} and not (folder / lm._OWNER_FILE).exists()
    assert not (tmp_path / ".smollm2-135m.tmp-dead2").exists() and live.is_dir()


# ----------------------------------------------------------------------------- embedded models


@pytest.mark.slow
@pytest.mark.parametrize("name", lm.EMBEDDED_MODELS)
def test_embedded_model_reads_letters(name):
    model, tok = lm.load_model(name, device="cpu")
    out = option_probs(model, tok, [SURVEY_PROMPT], LETTERS11)
    np.testing.assert_allclose(out.probs.sum(), 1.0, atol=1e-9)
    assert out.option_mass[0] > 0.3, out.option_mass
    # digits 0-10 after "Answer:" (" 10" is three tokens: space, 1, 0) with exact multi-token scoring
    rule = OptionRule(labels=tuple(str(i) for i in range(11)), leading_space=True, scoring="multi_token")
    digits = option_probs(model, tok, [digit_prompt()], rule)
    np.testing.assert_allclose(digits.probs.sum(), 1.0, atol=1e-9)
    assert len(digits.token_ids[-1]) == 3 and digits.option_mass[0] > 0.3, digits.option_mass


def test_default_device_is_the_launched_process_s_own_gpu(monkeypatch):
    """Under accelerate launch on GPUs each process loads onto cuda:<local rank>, not all onto the first GPU."""
    from types import SimpleNamespace

    from dsalib import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(distributed, "state", lambda: SimpleNamespace(device=torch.device("cuda", 3)))
    assert lm.default_device() == torch.device("cuda", 3)
    monkeypatch.setattr(distributed, "state", lambda: None)  # a plain process
    assert lm.default_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert lm.default_device() == torch.device("cpu")
