"""Each archive spec against a small synthetic file in the archive's own layout.

The files imitate what a user downloads (column names, separators, SPSS/Stata
value labels, missing codes, round/wave columns); the real files cannot be
shipped.  What each spec was checked against is written in
``params/datasets/README.md`` ("What the archive specs were checked against").
"""

import warnings

import numpy as np
import pandas as pd
import pyreadstat
import pytest

from dsalib import surveys
from dsalib.errors import DsaError

ESS_MISSING_11 = {77: "Refusal", 88: "Don't know", 99: "No answer"}
ESS_MISSING_5 = {7: "Refusal", 8: "Don't know", 9: "No answer"}


def _codes_for(spec, attr_or_q, rng, n, extra=()):
    """Random raw codes for a question or attribute: every option/level code plus the given extra codes."""
    if attr_or_q in spec.core:
        codes = [o.code for o in spec.core[attr_or_q].options]
    else:
        bq = spec.background[attr_or_q]
        codes = []
        for lv in bq.levels:
            codes += list(lv.codes)
            if lv.range is not None:
                lo, hi = lv.range
                codes += [int(lo), int(hi), int((lo + hi) // 2)]
        if bq.labels_from_data is not None:
            codes = list(bq.labels_from_data)[:5]
    return rng.choice(codes + list(extra), n)


def _labels(spec, q, missing_labels):
    labels = {o.code: o.label for o in spec.core[q].options}
    labels.update(missing_labels)
    return labels


def _expected_eligible(spec, frame, q, attrs, column_of=None):
    """Direct pandas count of respondents with a listed answer to q and every attribute (independent of recode)."""
    column_of = column_of or {}
    ok = frame[column_of.get(q, spec.core[q].variable)].isin([o.code for o in spec.core[q].options])
    for a in attrs:
        bq = spec.background[a]
        v = frame[bq.variable]
        hit = pd.Series(bq.labels_from_data is not None, index=frame.index) & v.notna()  # categorical: any code
        for lv in bq.levels:
            if lv.codes:
                hit |= v.isin(list(lv.codes))
            if lv.range is not None:
                hit |= v.between(*lv.range)
        ok &= hit & ~v.isin(list(bq.missing))
    return int(ok.sum())


# ---------------------------------------------------------------- ESS round 11: the file


def _ess11_frame(n=600, seed=0):
    spec = surveys.load_spec("ess11")
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "name": "ESS11e02_0", "essround": 11, "edition": "2.0", "proddate": "20.11.2024",
        "idno": np.arange(1, n + 1), "cntry": rng.choice(["AT", "BE", "CH", "DE", "FI", "GB", "NO"], n),
        "dweight": rng.uniform(0.5, 2, n), "pspwght": rng.uniform(0.5, 2, n), "pweight": rng.uniform(0.5, 2, n),
        "anweight": rng.uniform(0.1, 3, n),
    })
    for q in ["trstprl", "trstlgl", "trstplc", "trstplt", "trstprt", "ppltrst"]:  # only the trust items
        df[q] = _codes_for(spec, q, rng, n, extra=list(ESS_MISSING_11))
    df["gndr"] = rng.choice([1, 2, 9], n, p=[0.49, 0.49, 0.02])
    df["agea"] = rng.choice([16, 22, 35, 47, 58, 66, 81, 999], n)
    df["eisced"] = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 55, 77, 88], n)
    df["domicil"] = rng.choice([1, 2, 3, 4, 5, 7, 8], n)
    df["polintr"] = rng.choice([1, 2, 3, 4, 8], n)
    return spec, df


def test_ess11_semicolon_csv_with_only_trust_items(tmp_path):
    spec, df = _ess11_frame()
    df.to_csv(tmp_path / "ESS11e02_0.csv", sep=";", index=False)
    # the run names what it uses: only those columns are required
    s = surveys.load_survey("ess11", data_dir=tmp_path, questions=["trstprl", "trstlgl"],
                            background=["country", "gender", "age"])
    assert list(s.core) == ["trstprl", "trstlgl"] and list(s.background) == ["country", "gender", "age"]
    t = surveys.subgroup_table(s, "trstprl", ["country", "gender", "age"])
    assert t.n_respondents == _expected_eligible(spec, df, "trstprl", ["country", "gender", "age"])
    assert set(s.background["country"].level_names) >= {"Austria", "Norway", "the United Kingdom"}
    w = surveys.subgroup_table(s, "trstprl", ["country", "gender", "age"], weighted=True)
    assert w.counts.sum() == pytest.approx(df["anweight"].to_numpy()[s.eligible("trstprl", ["country", "gender", "age"])].sum())
    # without a list, the absent questions are reported, not fatal
    with pytest.warns(surveys.DataWarning, match="imbgeco"):
        s_all = surveys.load_survey("ess11", data_dir=tmp_path)
    assert "imbgeco" in s_all.unavailable and "column 'imbgeco' is absent" in s_all.unavailable["imbgeco"]
    assert set(s_all.core) == {"trstprl", "trstlgl", "trstplc", "trstplt", "trstprt", "ppltrst"}
    assert s_all.describe()["unavailable"]["lrscale"]


def test_ess11_file_saved_as_ess9_is_refused(tmp_path):
    _, df = _ess11_frame()
    spec9 = surveys.load_spec("ess9")
    rng = np.random.default_rng(1)
    for q in spec9.core:
        if q not in df:
            df[q] = _codes_for(spec9, q, rng, len(df))
    df.to_csv(tmp_path / "ESS9e03_2.csv", index=False)
    with pytest.raises(DsaError, match=r"column 'essround' has \['11'\] but the spec expects \[9\]"):
        surveys.load_survey("ess9", data_dir=tmp_path, source="file")


# ---------------------------------------------------------------- ESS round 9: SPSS and Stata with value labels


def _ess9_frame(n=500, seed=2):
    spec = surveys.load_spec("ess9")
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"essround": np.full(n, 9), "idno": np.arange(n),
                       "cntry": rng.choice(["GB", "DE", "FR", "IT"], n), "anweight": rng.uniform(0.2, 3, n)})
    labels = {}
    for q, cq in spec.core.items():
        extra = ESS_MISSING_5 if cq.n_options == 5 else ESS_MISSING_11
        df[q] = _codes_for(spec, q, rng, n, extra=list(extra)).astype(np.int64)
        labels[q] = _labels(spec, q, extra)
    df["gndr"] = rng.choice([1, 2, 9], n)
    df["agea"] = rng.choice([18, 33, 50, 70, 999], n)
    df["eisced"] = rng.choice([1, 2, 3, 5, 6, 7, 55, 77], n)
    df["domicil"] = rng.choice([1, 2, 3, 4, 5, 8], n)
    df["polintr"] = rng.choice([1, 2, 3, 4, 7], n)
    labels["gndr"] = {1: "Male", 2: "Female", 9: "No answer"}
    labels["polintr"] = {1: "Very interested", 2: "Quite interested", 3: "Hardly interested",
                         4: "Not at all interested", 7: "Refusal", 8: "Don't know", 9: "No answer"}
    return spec, df, labels


@pytest.mark.parametrize("fmt", ["sav", "dta"])
def test_ess9_spss_and_stata_with_value_labels(tmp_path, fmt):
    spec, df, labels = _ess9_frame()
    path = tmp_path / f"ESS9e03_2.{fmt}"
    if fmt == "sav":  # ESS SPSS files declare 77/88/99 (7/8/9) as user-missing
        missing = {q: [77, 88, 99] if spec.core[q].n_options == 11 else [7, 8, 9] for q in spec.core}
        pyreadstat.write_sav(df, str(path), variable_value_labels=labels, missing_ranges=missing)
    else:
        pyreadstat.write_dta(df, str(path), variable_value_labels=labels)
    s = surveys.load_survey("ess9", data_dir=tmp_path)
    assert s.source_name == str(path) and len(s.core) == 20
    attrs = list(s.default_background)
    for q in ["imbgeco", "freehms"]:
        t = surveys.subgroup_table(s, q)
        assert t.n_respondents == _expected_eligible(spec, df, q, attrs)
    check = surveys.file_label_check(s)
    assert len(check) == sum(cq.n_options for cq in spec.core.values())
    assert (check["spec_label"] == check["file_label"]).all()
    assert s.value_labels["gndr"][2] == "Female"


# ---------------------------------------------------------------- WVS wave 7


def _wvs_frame(n=700, seed=3):
    spec = surveys.load_spec("wvs")
    rng = np.random.default_rng(seed)
    countries = {20: "AND", 32: "ARG", 156: "CHN", 276: "DEU", 840: "USA"}
    country = rng.choice(list(countries), n)
    df = pd.DataFrame({"version": "6-0-0 (2024-04-30)", "doi": "doi.org/10.14281/18241.24", "A_WAVE": 7,
                       "A_YEAR": rng.choice([2017, 2018, 2020], n), "A_STUDY": 2, "B_COUNTRY": country,
                       "B_COUNTRY_ALPHA": [countries[c] for c in country], "D_INTERVIEW": np.arange(n),
                       "W_WEIGHT": rng.uniform(0.3, 2.5, n)})
    for q in spec.core:
        df[q] = _codes_for(spec, q, rng, n, extra=[-1, -2, -4, -5])
    df["Q260"] = rng.choice([1, 2, -2], n)
    df["Q262"] = rng.choice([18, 25, 40, 49, 50, 77, -2], n)
    df["Q275"] = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, -1], n)
    df["H_URBRURAL"] = rng.choice([1, 2, -5], n)
    df["Q288"] = rng.choice([1, 3, 4, 7, 8, 10, -1], n)
    return spec, df


@pytest.mark.parametrize("fmt", ["csv", "sav"])
def test_wvs7_cross_national_file(tmp_path, fmt):
    spec, df = _wvs_frame()
    path = tmp_path / f"WVS_Cross-National_Wave_7_csv_v6_0.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    else:
        labels = {q: _labels(spec, q, {-1: "Don't know", -2: "No answer", -4: "Not asked", -5: "Missing"})
                  for q in spec.core}
        pyreadstat.write_sav(df, str(path), variable_value_labels=labels)
    s = surveys.load_survey("wvs", data_dir=tmp_path)
    assert len(s.core) == 20 and s.weight == "W_WEIGHT"
    assert set(s.background["country"].level_names) >= {"Germany", "China"}
    attrs = list(s.default_background)
    for q in ["Q46", "Q49", "Q199"]:
        assert surveys.subgroup_table(s, q).n_respondents == _expected_eligible(spec, df, q, attrs)
    # negative codes are missing, never an answer
    assert (s.frame["Q46"].to_numpy()[df["Q46"].to_numpy() < 0] == -1).all()
    df["A_WAVE"] = 6
    df.to_csv(tmp_path / "WVS_Cross-National_Wave_7_csv_v6_0.csv", index=False)
    if fmt == "csv":
        with pytest.raises(DsaError, match="column 'A_WAVE'.*expects \\[7\\]"):
            surveys.load_survey("wvs", data_dir=tmp_path)


# ---------------------------------------------------------------- CGSS 2018 and CFPS 2018 (Stata)


def test_cgss2018_stata_file(tmp_path):
    spec = surveys.load_spec("cgss")
    rng = np.random.default_rng(4)
    n = 600
    df = pd.DataFrame({"id": np.arange(1, n + 1), "s41": rng.integers(1, 29, n), "weight": rng.uniform(0.2, 3, n),
                       "weight_raking": rng.uniform(0.2, 3, n)})
    labels = {}
    for q in spec.core:
        df[q] = _codes_for(spec, q, rng, n, extra=[98, 99, -1, -2, -3]).astype(np.int64)
        labels[q] = _labels(spec, q, {98: "不知道", 99: "拒绝回答", -1: "不适用", -2: "不知道", -3: "拒绝回答"})
    df["a2"] = rng.choice([1, 2], n)
    df["a31"] = rng.choice([1935, 1950, 1962, 1978, 1985, 1999], n)
    df["a7a"] = rng.choice(list(range(1, 15)) + [-3], n)
    df["a10"] = rng.choice([1, 2, 3, 4, -3], n)
    df["a18"] = rng.choice([1, 2, 3, 4, 5, 6, 7, -3], n)
    labels["a2"] = {1: "男", 2: "女"}
    path = tmp_path / "CGSS2018.dta"
    pyreadstat.write_dta(df, str(path), variable_value_labels=labels)
    s = surveys.load_survey("cgss", data_dir=tmp_path)
    assert len(s.core) == 8 and not s.unavailable
    attrs = list(s.default_background)
    for q in ["a36", "a43a", "a285"]:
        assert surveys.subgroup_table(s, q).n_respondents == _expected_eligible(spec, df, q, attrs)
    assert s.value_labels["a2"][2] == "女"
    assert (surveys.file_label_check(s).query("question == 'a36'")["spec_label"] == "Very happy").any()


def test_cfps2018_stata_file(tmp_path):
    spec = surveys.load_spec("cfps")
    rng = np.random.default_rng(5)
    n = 600
    df = pd.DataFrame({"pid": np.arange(100001, 100001 + n), "fid18": rng.integers(1, 300, n),
                       "provcd18": rng.choice([11, 31, 44, 51], n)})
    for q in spec.core:
        df[q] = _codes_for(spec, q, rng, n, extra=[-1, -2, -8, -9, -10]).astype(np.int64)
    df["gender"] = rng.choice([0, 1], n)
    df["age"] = rng.choice([17, 30, 45, 59, 60, 85], n)
    df["urban18"] = rng.choice([0, 1, -9], n)
    df["cfps2018edu"] = rng.choice([1, 2, 3, 4, 5, 6, 7, 8, -8], n)
    df["qea0"] = rng.choice([1, 2, 3, 4, 5, -8], n)
    path = tmp_path / "cfps2018person_202012.dta"
    pyreadstat.write_dta(df, str(path), variable_value_labels={"gender": {0: "女", 1: "男"}})
    with warnings.catch_warnings():
        warnings.simplefilter("error", surveys.DataWarning)  # every spec column is in the file
        s = surveys.load_survey("cfps", data_dir=tmp_path)
    attrs = list(s.default_background)
    for q in ["qn12012", "qm2016", "qn10021"]:
        assert surveys.subgroup_table(s, q).n_respondents == _expected_eligible(spec, df, q, attrs)
    assert s.background["gender"].level_names == ("male", "female")


def test_stata_text_in_a_legacy_encoding_is_retried(tmp_path, monkeypatch):
    """Older CGSS/CFPS Stata files hold GBK text; pyreadstat then fails on the encoding and the loader retries."""
    from dsalib import loaders

    df = pd.DataFrame({"a2": [1, 2, 1]})
    path = tmp_path / "CGSS2018.dta"
    pyreadstat.write_dta(df, str(path), variable_value_labels={"a2": {1: "男", 2: "女"}})
    real = pyreadstat.read_dta
    calls = []

    def picky(p, encoding=None, **kw):
        calls.append(encoding)
        if encoding is None:
            raise pyreadstat.ReadstatError("Unable to convert string to the requested encoding (invalid byte sequence)")
        return real(p, **kw)

    monkeypatch.setattr(pyreadstat, "read_dta", picky)
    frame = loaders.read_table(path)
    assert calls == [None, "gb18030"] and frame["a2"].tolist() == [1, 2, 1]
    monkeypatch.setattr(pyreadstat, "read_dta", lambda p, encoding=None, **kw: (_ for _ in ()).throw(
        pyreadstat.ReadstatError("Unable to convert string to the requested encoding")))
    with pytest.raises(DsaError, match="could not be read"):
        loaders.read_table(path)
