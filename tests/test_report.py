"""The report's building blocks: dsalib.report (tables, palette, figures), dsalib.findings (headline numbers),
dsalib.progress (no TqdmWarning in notebooks)."""

import math
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsalib import findings, methods, progress, report
from dsalib.errors import DsaError

# --------------------------------------------------------------------------
# numbers and tables
# --------------------------------------------------------------------------


@pytest.mark.parametrize("x,text", [
    (0.091234, "0.0912"), (43.2687, "43.3"), (1415, "1,415"), (12345.6, "12,346"), (0.5, "0.500"),
    (-0.25, "−0.250"), (-0.00001, "0.0000100".replace("0.0", "−0.0", 1)), (0.0, "0.00"), (np.int64(7), "7"),
    (True, "yes"), (False, "no"), (float("nan"), "—"), (None, "—"), (1.0, "1.00"), (999.96, "1,000"),
])
def test_format_number(x, text):
    assert report.format_number(x) == text


def test_format_number_tiny_negative_rounds_to_plain_zero():
    assert report.format_number(-0.0000001, sig=1) == "−0.0000001"
    assert report.format_number(-1e-20) == "−0.0000000000000000000100"
    assert not report.format_number(-0.0).startswith(("-", "−"))


def test_mean_sd_and_share():
    assert report.mean_sd(0.091234, 0.00311) == "0.0912 ± 0.0031"
    assert report.mean_sd(0.5, float("nan")) == "0.500"
    assert report.mean_sd(0.308, 0.00042) == "0.308 ± 0.0004"
    assert report.mean_sd(0.308, 0.0) == "0.308 ± 0.000"
    assert report.mean_sd(float("nan"), 0.1) == "—"
    assert report.format_share(0.7591) == "75.9%"
    assert report.format_share(1.0) == "100.0%"
    assert report.format_share(float("nan")) == "—"


def _tidy(seed_means):
    """Rows per (question, seed, method) whose per-seed mean over questions is ``seed_means[method][seed]``."""
    rows = []
    for m, per_seed in seed_means.items():
        for s, v in enumerate(per_seed):
            rows += [{"truth_mode": "full", "method": m, "seed": s, "question": "q1", "jsd_mean": v - 0.01},
                     {"truth_mode": "full", "method": m, "seed": s, "question": "q2", "jsd_mean": v + 0.01}]
    return pd.DataFrame(rows)


def test_seed_summary_is_mean_and_sd_over_seed_means():
    rows = _tidy({"DSA": [0.10, 0.12, 0.14], "TS": [0.2, 0.2, 0.2], "floor": [0.05, 0.05, 0.05]})
    s = report.seed_summary(rows, "jsd_mean")
    assert list(s.method) == ["TS", "DSA", "floor"]  # registry order, floor last
    dsa = s.set_index("method").loc["DSA"]
    assert dsa.jsd_mean == pytest.approx(0.12)
    assert dsa.jsd_mean_sd == pytest.approx(0.02)  # sd of 0.10, 0.12, 0.14 (ddof=1)
    assert dsa.seeds == 3
    with pytest.raises(DsaError, match="no column"):
        report.seed_summary(rows, "wd_mean")


def test_method_table_cells():
    rows = _tidy({"DSA": [0.10, 0.12, 0.14], "TS": [0.2, 0.2, 0.2]})
    t = report.method_table(rows, metrics=["jsd_mean"])
    assert list(t.index) == ["TS", "DSA"]
    assert t.loc["DSA", "JSD, full data"] == "0.120 ± 0.020"
    assert t.loc["TS", "JSD, full data"] == "0.200 ± 0.000"


def test_table_formats_every_cell():
    df = pd.DataFrame({
        "method": ["floor", "DSA", "TS"], "truth_mode": ["heldout", "full", "full"],
        "jsd_mean": [0.0123456, float("nan"), 0.16781689], "subgroups": [1415, 70, 71],
        "code_dirty": [False, True, False], "output": [Path("outputs/x"), Path("a/b"), Path("c")],
        "share": [0.5, 0.25, 1.0],
    })
    t = report.table(df, caption="A caption", notes=["A note."])
    assert list(t.frame.columns) == ["Method", "Truth", "JSD", "Subgroups", "Uncommitted changes", "output",
                                     "Share better than TS"]
    assert list(t.frame["Method"]) == ["TS", "DSA", "floor"]
    assert list(t.frame["Truth"]) == ["full data", "full data", "held-out"]
    assert list(t.frame["JSD"]) == ["0.168", "—", "0.0123"]
    assert list(t.frame["Uncommitted changes"]) == ["no", "yes", "no"]
    assert list(t.frame["Share better than TS"]) == ["100.0%", "25.0%", "50.0%"]
    html = t._repr_html_()
    for bad in ("NaN", "nan", "PosixPath", "True", "False", "None"):
        assert bad not in html, bad
    assert "—: not available." in html and "A caption" in html and "A note." in html
    assert 'class="report-table"' in html
    assert "PosixPath" not in repr(t)


def test_table_collapses_long_tables():
    df = pd.DataFrame({"x": np.arange(40)})
    html = report.table(df, max_rows=10)._repr_html_()
    assert "<details><summary>All 40 rows</summary>" in html
    head, rest = html.split("<details>")
    assert head.count("<tr") == 11  # header + 10 rows shown before the collapsed block
    assert rest.count("<tr") == 41
    assert "<details>" not in report.table(df, max_rows=40)._repr_html_()
    with pytest.raises(DsaError, match="max_rows"):
        report.table(df, max_rows=0)
    with pytest.raises(DsaError, match="DataFrame"):
        report.table([1, 2])


def test_table_escapes_html():
    html = report.table(pd.DataFrame({"a": ["<b>x</b>"]}))._repr_html_()
    assert "<b>x</b>" not in html and "&lt;b&gt;" in html


def test_method_order_and_colours():
    assert report.METHOD_ORDER[: len(methods.ALL)] == methods.ALL
    assert report.METHOD_ORDER[-1] == "floor"
    assert report.method_order(["floor", "zzz", "DSA", "TS", "aaa"]) == ["TS", "DSA", "floor", "aaa", "zzz"]
    colours = report.METHOD_COLORS
    assert set(colours) == set(report.METHOD_ORDER)
    assert len(set(colours.values())) == len(colours), "two methods share a colour"
    with pytest.raises(DsaError, match="no colour"):
        report.method_color("NewMethod")


def test_every_method_name_in_the_outputs_has_a_colour():
    root = Path(__file__).resolve().parents[1] / "outputs"
    names = set()
    for path in root.glob("*/*/*.csv"):
        head = pd.read_csv(path, nrows=0)
        if "method" in head.columns:
            names |= set(pd.read_csv(path, usecols=["method"])["method"].astype(str))
    assert names, "no result tables with a method column"
    assert names <= set(report.METHOD_COLORS), sorted(names - set(report.METHOD_COLORS))


def test_figure_fonts_are_readable_at_the_column_width():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report.style()
    fig, axes = report.figure(1, 2)
    ax = axes[0][0]
    ax.plot([0, 1], [0, 1], label="DSA", color=report.method_color("DSA"))
    report.legend_outside(fig, where="below")
    fig.canvas.draw()
    width_px = fig.get_size_inches()[0] * fig.dpi
    assert 500 <= width_px <= report.COLUMN_PX * 1.5
    sizes = [t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_text()]
    assert sizes and min(sizes) >= report.MIN_FONT_PT
    assert report.rendered_font_px(min(sizes)) >= 12
    # a legend below the figure lies outside every axes
    legend_box = fig.legends[0].get_window_extent()
    assert legend_box.y1 <= ax.get_window_extent().y0
    plt.close(fig)
    with pytest.raises(DsaError, match="500 px"):
        report.figure(width=3)
    with pytest.raises(DsaError, match="tick labels"):
        report.style(font_pt=9)
    report.style()


def test_option_bars_are_categorical_grouped_bars():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = report.figure()
    ax = axes[0][0]
    report.option_bars(ax, {"truth": [0.2, 0.5, 0.3], "DSA": [0.3, 0.4, 0.3]}, ["less", "same", "more"])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["less", "same", "more"]
    assert len(ax.patches) == 6 and not ax.lines
    assert ax.patches[3].get_facecolor()[:3] == pytest.approx(report.method_color("DSA"))
    with pytest.raises(DsaError, match="3 values"):
        report.option_bars(ax, {"DSA": [0.5, 0.5]}, ["a", "b", "c"])
    plt.close(fig)


def test_method_points_one_point_per_method():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = report.figure()
    s = pd.DataFrame({"method": ["DSA", "TS"], "ratio": [0.6, 1.0], "ratio_sd": [0.01, np.nan]})
    report.method_points(axes[0][0], s, "ratio", "ratio_sd", reference=1.0)
    assert [t.get_text() for t in axes[0][0].get_yticklabels()] == ["TS", "DSA"]
    with pytest.raises(DsaError, match="one row per method"):
        report.method_points(axes[0][0], pd.concat([s, s]), "ratio")
    plt.close(fig)


# --------------------------------------------------------------------------
# findings
# --------------------------------------------------------------------------


def _write_runs(root: Path, name: str, errors: dict, seeds=(0, 1), questions=("q1", "q2"), modes=("full", "heldout")):
    """results.csv with error = errors[method] * (1 + 0.1 * seed) for every question and mode."""
    rows = []
    for mode in modes:
        for q in questions:
            for s in seeds:
                for m, e in errors.items():
                    v = e * (1 + 0.1 * s)
                    rows.append({"question": q, "seed": s, "method": m, "truth_mode": mode, "jsd_mean": v,
                                 "wd_scaled_mean": v / 2, "wd_mean": v * 5, "n": 500, "model": "tiny"})
    (root / name).mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / name / "results.csv", index=False)


def test_ratios_to_ts(tmp_path):
    _write_runs(tmp_path, "a", {"TS": 0.2, "MNL": 0.1, "TKFT": 0.12, "DSA": 0.13, "floor": 0.05})
    runs = findings.load_enhancement(tmp_path)
    r = findings.ratios_to_ts(runs).set_index(["truth_mode", "method"])
    assert r.loc[("full", "TS"), "ratio"] == pytest.approx(1.0)
    assert r.loc[("full", "MNL"), "ratio"] == pytest.approx(0.5)
    assert r.loc[("full", "DSA"), "ratio"] == pytest.approx(0.65)
    assert r.loc[("full", "DSA"), "ratio_sd"] == pytest.approx(0.0, abs=1e-12)  # same ratio on both seeds
    assert r.loc[("full", "DSA"), "seeds"] == 2
    assert list(r.loc["full"].index) == ["TS", "MNL", "TKFT", "DSA", "floor"]


def test_weighting_effect_changes_and_ranks(tmp_path):
    _write_runs(tmp_path, "plain", {"TS": 0.2, "MNL": 0.1, "TKFT": 0.12, "floor": 0.05})
    _write_runs(tmp_path, "weighted", {"TS": 0.22, "MNL": 0.13, "TKFT": 0.12, "floor": 0.06})
    w = findings.weighting_effect("plain", "weighted", tmp_path).set_index(["truth_mode", "method"])
    assert "floor" not in w.index.get_level_values("method")
    # means over questions and seeds (seed 1 is 10% higher): 1.05 x the given error
    assert w.loc[("full", "MNL"), "unweighted"] == pytest.approx(0.105)
    assert w.loc[("full", "MNL"), "change"] == pytest.approx(0.0315)
    assert w.loc[("full", "MNL"), "relative_change"] == pytest.approx(0.3)
    assert (w.loc[("full", "MNL"), "rank_unweighted"], w.loc[("full", "MNL"), "rank_weighted"]) == (1, 2)
    assert (w.loc[("full", "TKFT"), "rank_unweighted"], w.loc[("full", "TKFT"), "rank_weighted"]) == (2, 1)
    with pytest.raises(DsaError, match="no Enhancement run"):
        findings.weighting_effect("plain", "absent", tmp_path)


def test_headline_numbers(tmp_path):
    _write_runs(tmp_path, "a", {"TS": 0.2, "MNL": 0.1, "AAE": 0.11, "TKFT": 0.12, "DSA": 0.13, "EB-TKFT": 0.09,
                                "floor": 0.05})
    _write_runs(tmp_path, "b", {"TS": 0.1, "MNL": 0.04, "AAE": 0.05, "TKFT": 0.06, "DSA": 0.06, "EB-TKFT": 0.05,
                                "floor": 0.02})
    h = findings.headline(findings.load_enhancement(tmp_path))
    assert h["n_datasets"] == 2 and h["datasets"] == "a, b"
    assert h["best_llm_full"] == "EB-TKFT"
    assert h["best_llm_ratio_full"] == pytest.approx((0.45 + 0.5) / 2)
    assert h["best_paper_method_full"] == "AAE"
    assert h["mnl_ratio_full"] == pytest.approx((0.5 + 0.4) / 2)
    assert h["best_llm_beats_mnl_datasets_full"] == 1  # a: 0.45 < 0.5; b: 0.5 > 0.4
    assert h["tkft_ratio_min_full"] == pytest.approx(0.6) and h["tkft_ratio_max_full"] == pytest.approx(0.6)
    # DSA vs TKFT: higher on a (4 runs), equal on b (4 runs), per truth mode
    assert (h["dsa_below_tkft_runs_full"], h["dsa_below_tkft_lower_full"], h["dsa_below_tkft_equal_full"],
            h["dsa_below_tkft_higher_full"]) == (8, 0, 4, 4)
    assert h["dsa_below_tkft_share_lower_full"] == 0.0


def test_pairwise_share_counts_lower(tmp_path):
    _write_runs(tmp_path, "a", {"TS": 0.2, "TKFT": 0.12, "DSA": 0.11})
    pw = findings.pairwise_share(findings.load_enhancement(tmp_path), "DSA", "TKFT", truth_mode="full")
    assert pw == {"runs": 4, "lower": 4, "equal": 0, "higher": 0, "share_lower": 1.0}
    with pytest.raises(DsaError, match="not in the runs"):
        findings.pairwise_share(findings.load_enhancement(tmp_path), "DSA", "MNL")


def test_load_enhancement_errors(tmp_path):
    with pytest.raises(DsaError, match="no Enhancement outputs"):
        findings.load_enhancement(tmp_path / "nope")
    with pytest.raises(DsaError, match="holds no"):
        findings.load_enhancement(tmp_path)
    _write_runs(tmp_path, "a", {"TS": 0.2, "DSA": 0.1})
    with pytest.raises(DsaError, match=r"no results.csv for \['b'\]"):
        findings.load_enhancement(tmp_path, ["b"])
    _write_runs(tmp_path, "c", {"DSA": 0.1})
    with pytest.raises(DsaError, match="without a TS row"):
        findings.load_enhancement(tmp_path)


def test_paper_ratios_from_the_transcribed_table():
    p = findings.paper_ratios()
    row = p[(p.llm == "Qwen3-4B") & (p.method == "DSA") & (p.dataset == "ESS9")].iloc[0]
    assert row.error == pytest.approx(0.007) and row.ts_error == pytest.approx(0.011)
    assert row.ratio == pytest.approx(0.007 / 0.011)
    assert set(p.llm) == {"Qwen3-4B", "Qwen3-32B", "Llama3-8B"}
    assert "TS" not in set(p.method)


def test_headline_on_the_committed_outputs():
    """The committed reference runs: the numbers the book's front page glues (recomputed here)."""
    import yaml

    chosen = yaml.safe_load((findings.REPO / "params" / "summary" / "default.yaml").read_text())["datasets"]
    runs = findings.load_enhancement(datasets=chosen)  # the summary's reference runs (not the weighted variant)
    h = findings.headline(runs)
    assert h["n_datasets"] >= 3
    for mode in ("full", "heldout"):
        assert 0 < h[f"floor_ratio_{mode}"] < h[f"mnl_ratio_{mode}"] < 1
        assert h[f"dsa_below_tkft_runs_{mode}"] == len(runs[(runs.truth_mode == mode) & (runs.method == "DSA")])


# --------------------------------------------------------------------------
# progress bars
# --------------------------------------------------------------------------


def _fake_kernel(monkeypatch):
    shell = types.SimpleNamespace(config={"IPKernelApp": {}})
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: shell
    monkeypatch.setitem(sys.modules, "IPython", fake)


def test_progress_in_a_kernel_without_widgets_is_silent(monkeypatch, capsys):
    _fake_kernel(monkeypatch)
    monkeypatch.setattr(progress, "_widgets_available", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert progress.bar_class() is None
        assert list(progress.bar(range(3), desc="x")) == [0, 1, 2]
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_progress_not_a_terminal_is_silent(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert progress.bar_class() is None  # pytest captures stderr: not a TTY
    assert list(progress.bar(range(2), desc="x", leave=False, disable=None)) == [0, 1]
    assert capsys.readouterr().err == ""


def test_progress_terminal_gets_text_bar(monkeypatch):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    monkeypatch.setattr(sys, "stderr", types.SimpleNamespace(isatty=lambda: True, write=lambda s: None,
                                                              flush=lambda: None))
    from tqdm.std import tqdm

    assert progress.bar_class() is tqdm
    assert progress.bar(range(1), enabled=False).disable
    assert progress.bar(range(1), disable=True).disable


def test_dsalib_does_not_import_tqdm_auto():
    root = Path(__file__).resolve().parents[1] / "dsalib"
    # progress.import_tqdm_auto_quietly is the one deliberate import (for the libraries that import it)
    offenders = [p.name for p in root.glob("*.py")
                 if "tqdm.auto" in p.read_text().replace("``tqdm.auto``", "").replace(
                     "        import tqdm.auto  # noqa: F401 (the quiet import)", "")]
    assert not offenders, f"use dsalib.progress.bar instead of tqdm.auto in {offenders}"


def test_check_fits_column_catches_a_wide_legend():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report.style()
    fig, axes = report.figure()
    for i in range(6):
        axes[0][0].plot([0, 1], [i, i], label=f"a rather long legend label number {i}")
    report.legend_outside(fig, where="below", ncol=6)
    with pytest.raises(DsaError, match="px wide with its legend"):
        report.check_fits_column(fig)
    report.legend_outside(fig, where="below", ncol=2)
    assert report.check_fits_column(fig) <= report.COLUMN_PX * 1.05
    plt.close(fig)


def test_data_savings_never_show_a_huge_negative_bound():
    t = findings.load_data_savings(n=500)
    worse = t.status.str.startswith("worse than TS")
    assert worse.any()
    assert (t.loc[worse, "saving_shown"] == "none (worse than TS)").all()
    assert not t.saving_shown.dropna().str.contains("900").any()


def test_study_table_loaders(tmp_path):
    with pytest.raises(DsaError, match="no better_than_ts.csv"):
        findings.load_better_than_ts(tmp_path)
    b = findings.load_better_than_ts(train_size=500)
    assert set(b.columns) >= {"dataset", "truth_mode", "method", "share"} and b.share.between(0, 1).all()
    with pytest.raises(DsaError, match="train_size 7"):
        findings.load_better_than_ts(train_size=7)
    facts = findings.scale_facts(datasets=["ess9"]).iloc[0]
    assert facts.n == 500 and facts.questions >= 1 and 0 < facts.train_median < facts.truth_median


def test_verdicts_follow_the_numbers():
    base = {"n_datasets": 3, "tkft_ratio_max_full": 0.7, "tkft_ratio_min_full": 0.5, "dsa_below_tkft_lower_full": 0,
            "dsa_below_tkft_runs_full": 60, "best_llm_beats_mnl_datasets_full": 1, "best_llm_vs_mnl_full": 1.001,
            "best_llm_full": "EB-TKFT", "zero_shot_ratio_min_full": 1.2}
    v = findings.verdicts(base)
    assert v["tkft_vs_ts"].startswith("Fine-tuning beats") and v["dsa_vs_tkft"] == "DSA did not beat TKFT."
    assert v["llm_vs_stat"].startswith("The best LLM method only matches")
    assert v["best_llm_gloss"] == "shrinkage toward the fine-tuned model" and v["best_llm_vs_mnl"] == "0.1% above"
    assert "worse than TS on every dataset" in v["zero_shot"]
    v = findings.verdicts({**base, "tkft_ratio_max_full": 1.2, "dsa_below_tkft_lower_full": 40,
                           "best_llm_beats_mnl_datasets_full": 0, "best_llm_vs_mnl_full": 0.9,
                           "zero_shot_ratio_min_full": 0.8})
    assert v["tkft_vs_ts"].endswith("some datasets only.") and v["dsa_vs_tkft"] == "DSA beat TKFT in 40 of 60 runs."
    assert v["llm_vs_stat"] == "No LLM method beat the statistical models." and v["best_llm_vs_mnl"] == "10.0% below"
    assert "beats TS on some datasets" in v["zero_shot"]
    v = findings.verdicts({**base, "dsa_below_tkft_lower_full": 5, "best_llm_beats_mnl_datasets_full": 3})
    assert v["dsa_vs_tkft"] == "DSA beat TKFT in only 5 of 60 runs." and "every dataset" in v["llm_vs_stat"]
    with pytest.raises(DsaError, match="lack"):
        findings.verdicts({}, "heldout")


def test_phase2_sentence_counts_outcomes():
    text = report.phase2_sentence(["run", "rejected", "rejected"])
    assert text == ("Phase 2 of `DSA` ran and was kept in 1 of 3 fits; was rejected by the validation guard "
                    "in 2 of 3 fits.")
    assert "Phase 1 (TKFT) model" in report.phase2_sentence(["skipped"])
    with pytest.raises(DsaError, match="unknown"):
        report.phase2_sentence(["kept"])
    with pytest.raises(DsaError, match="no DSA fits"):
        report.phase2_sentence([])


def test_versus_says_higher_or_lower():
    assert report.versus("DSA", 0.114, "MNL", 0.1, "JSD") == "`DSA` 0.114 against `MNL` 0.100 (JSD): 14.0% higher"
    assert report.versus("DSA", 0.09, "MNL", 0.1).endswith("10.0% lower")
    assert report.versus("DSA", 0.1, "MNL", 0.1).endswith("level")
    with pytest.raises(DsaError, match="MNL"):
        report.versus("DSA", 0.1, "MNL", float("nan"))


def test_tqdm_auto_is_imported_without_its_iprogress_warning():
    import importlib
    import sys

    for name in [m for m in sys.modules if m == "tqdm.auto" or m == "tqdm.autonotebook"]:
        del sys.modules[name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        progress.import_tqdm_auto_quietly()
    assert "tqdm.auto" in sys.modules
    assert not [w for w in caught if "IProgress" in str(w.message)]
    importlib.import_module("tqdm.auto")


def test_log_axis_labels_plain_numbers():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([50, 1500], [1, 2])
    report.log_axis(ax, [50, 100, 150, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500])
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert ax.get_xscale() == "log" and labels[0] == "50" and labels[-1] == "1,500" and len(labels) <= 8
    assert not ax.xaxis.get_minorticklocs().size
    # labels too close on the log scale are thinned, keeping the last one (no "800" over "1,000")
    report.log_axis(ax, [50, 150, 300, 500, 800, 1000])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["50", "150", "300", "500", "1,000"]
    report.log_axis(ax, [0.07, 0.1, 0.3], which="y")  # fractions as written: "0.07", not "0.0700"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0.07", "0.1", "0.3"]
    with pytest.raises(DsaError, match="positive"):
        report.log_axis(ax, [0, 10])
    plt.close(fig)


def test_table_formats_settings_mappings_without_reprs():
    t = report.table(pd.DataFrame({"parameter": ["variants", "phase1"],
                                   "value": [{"DSA": {"guard": False}, "DSA-ratio": {"guard": False, "lr": 0.001}},
                                             {}]}))
    assert list(t.frame["value"]) == ["DSA: guard no; DSA-ratio: guard no, lr 0.00100", "none"]
    assert "{" not in t.html and "False" not in t.html


def test_table_html_never_breaks_inside_a_number():
    t = report.table(pd.DataFrame({"method": ["TS"], "JSD": [report.mean_sd(0.011, 0.002)], "saving": ["> 50.0%"],
                                   "note": ["worse than TS"]}))
    html_text = t._repr_html_()
    assert "0.0110\u00a0±\u00a00.0020" in html_text and ">\u00a050.0%" in html_text.replace("&gt;", ">")
    assert "worse than TS" in html_text  # ordinary words still wrap


def test_generation_ratios_divide_by_direct_in_ours_and_the_papers(tmp_path):
    run = tmp_path / "gen" / "toy"
    run.mkdir(parents=True)
    cols = {f"{m}|{s}": [] for m in ("jsd_mean", "wd_scaled_mean") for s in findings.GENERATION_SPLITS}
    rows = {"Direct": 0.2, "TKFT": 0.05}
    frame = pd.DataFrame({"method": list(rows), **{c: list(rows.values()) for c in cols}})
    frame.to_csv(run / "summary.csv", index=False)
    r = findings.generation_ratios(tmp_path / "gen")
    ours = r[(r.source == "ours, toy") & (r.split == "Avg")].set_index("method").ratio
    assert ours["Direct"] == 1.0 and abs(ours["TKFT"] - 0.25) < 1e-12
    paper = r[(r.source == "paper, Qwen3-4B") & (r.split == "Avg")].set_index("method")
    assert abs(paper.loc["DSA", "ratio"] - 0.208 / 0.378) < 1e-12  # the transcribed Table 2: JSD Avg.
    frame[frame.method != "Direct"].to_csv(run / "summary.csv", index=False)
    with pytest.raises(DsaError, match="no Direct row"):
        findings.generation_ratios(tmp_path / "gen")
    with pytest.raises(DsaError, match="metric"):
        findings.generation_ratios(tmp_path / "gen", metric="kl")


@given(st.lists(st.floats(min_value=1e-6, max_value=1e3, allow_nan=False), min_size=1, max_size=20),
       st.lists(st.floats(max_value=0, allow_nan=False), max_size=3))
@settings(max_examples=200, deadline=None)
def test_nice_log_ticks_span_the_positive_values(positive, non_positive):
    ticks = report.nice_log_ticks(positive + non_positive)  # zeros and negatives are left out, never an error
    assert len(ticks) >= 2 and ticks == sorted(set(ticks)) and all(t > 0 for t in ticks)
    assert ticks[0] <= min(positive) * (1 + 1e-9) and ticks[-1] >= max(positive) * (1 - 1e-9)
    assert ticks[-1] / ticks[0] <= max(positive) / min(positive) * 10  # no more than one step beyond each end


def test_nice_log_ticks_need_a_positive_value():
    with pytest.raises(DsaError, match="no positive value"):
        report.nice_log_ticks([0.0, -1.0, float("nan")])
