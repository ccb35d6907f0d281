# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (dsa)
#     language: python
#     name: dsa
# ---

# %% [markdown]
# # Summary: what the Enhancement runs found, across datasets and beside the paper
#
# This notebook runs no experiment. It reads the committed Enhancement tables
# (`outputs/enhancement/<dataset>/results.csv`), the robustness study's
# better-than-TS shares and the data-efficiency study's savings, and the paper's
# Table 1 as transcribed in `book/_data/`. Absolute errors here and in the paper
# differ by an order of magnitude (model size, data size), so every method's error
# is shown as a ratio to the training sample's (`TS`) in the same dataset and truth
# mode, beside the noise floor's ratio. All logic is in `dsalib.findings` and
# `dsalib.report`; the book's front page and comparison page glue from here.

# %%
import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
from IPython.display import display
from myst_nb import glue

from dsalib import config, findings, report, results, study

results.use_png_figures()
report.style()
_names_before_parameters = set(globals())

# %% tags=["parameters"]
# Every setting of this summary (dsalib.config.SummaryConfig; papermill overrides them with -f params/summary/<name>.yaml).
enhancement_dir = "outputs/enhancement"  # Enhancement runs: <dir>/<dataset>/results.csv
robustness_dir = "outputs/robustness"  # better-than-TS shares: <dir>/<dataset>/better_than_ts.csv
data_efficiency_dir = "outputs/data_efficiency"  # data savings: <dir>/<dataset>/equivalent_sizes.csv
datasets = None  # run folders to read; None means every folder with a results.csv
metric = "jsd_mean"  # error measure of the ratios: jsd_mean or wd_scaled_mean
paper_table = "book/_data/paper_table1_enhancement_jsd.csv"  # the paper's Table 1 (same measure as metric)
paper_llms = ["Qwen3-4B", "Qwen3-32B", "Llama3-8B"]  # the paper's LLMs to show beside ours
generation_dir = "outputs/generation"  # Generation runs: <dir>/<dataset>/summary.csv
paper_generation_table = "book/_data/paper_table2_generation.csv"  # the paper's Table 2, beside ours as ratios to Direct
weighting_runs = ["ess10no", "ess10no_weighted"]  # unweighted and weighted run of one dataset; [] skips that part
output_dir = None  # None means runs/summary/default/ (git-ignored); relative paths are under the repository root

# %%
cfg = config.from_notebook("summary", globals(), _names_before_parameters)
params = cfg.to_params()
runs = findings.load_enhancement(enhancement_dir, datasets)
paper = findings.paper_ratios(paper_table)
unknown_llms = sorted(set(paper_llms) - set(paper.llm))
if unknown_llms:
    raise ValueError(f"paper_llms {unknown_llms} are not in {paper_table}; it has {sorted(paper.llm.unique())}")
out = study.OutputFolder(study.output_dir_for(cfg))  # tables go to a temporary folder, swapped in at the end
prov = results.provenance()
names = sorted(runs.dataset.unique())
modes = [m for m in ("full", "heldout") if m in set(runs.truth_mode)]

# %% [markdown]
# ## Ratios to the training sample
#
# For each dataset and truth mode: the method's mean error over questions and seeds,
# divided by `TS`'s. Below 1 is better than the training sample; the noise floor
# (`floor`) is about as low as any method can go. The ± is the standard deviation of
# the ratio over the training samples (seeds).

# %%
ratios = findings.ratios_to_ts(runs, metric)
results.write_table(ratios, out / "ratios_to_ts.csv", prov)
for mode in modes:
    wide = pd.DataFrame(index=pd.Index(report.method_order(ratios.method), name="method"))
    for d in names:
        part = ratios[(ratios.dataset == d) & (ratios.truth_mode == mode)].set_index("method")
        wide[d] = [report.mean_sd(part.ratio.get(m), part.ratio_sd.get(m)) if m in part.index else np.nan
                   for m in wide.index]
    ratio_table = report.table(wide, caption=f"Truth: {report.TRUTH_LABELS[mode]}. Error ({report.column_label(metric)}) "
                                             f"as a ratio to TS, mean ± s.d. over seeds",
                               missing="method not run on this dataset")
    display(ratio_table)
    glue(f"sum_ratio_table_{mode}", ratio_table, display=False)

# %%
# largest relative error of a ratio of two values each rounded to 3 decimals (±0.0005)
rounding = float((0.0005 / paper.error + 0.0005 / paper.ts_error).max())
paper_wide = paper[paper.llm.isin(paper_llms)].pivot_table(index=["llm", "method"], columns="dataset",
                                                             values="ratio", sort=False)
paper_wide = paper_wide[[c for c in paper.dataset.unique()]].reset_index()
paper_table_fmt = report.table(paper_wide.rename(columns={"llm": "LLM"}),
                               caption="The paper's Table 1 as ratios to its TS row (computed from the printed values)",
                               notes=[f"The paper prints three decimals (its TS row: {paper.ts_error.min():.3f}-"
                                      f"{paper.ts_error.max():.3f}), so a ratio can be off by up to "
                                      f"{report.format_share(rounding)} from rounding alone."])
display(paper_table_fmt)
glue("sum_paper_ratio_table", paper_table_fmt, display=False)

# %% [markdown]
# ## The headline figure

# %%
markers = dict(zip(names, ["o", "s", "D", "^", "v", "P"]))
paper_markers = dict(zip(paper_llms, ["o", "s", "D"]))
shown = [m for m in report.method_order(ratios.method) if m != "TS"]
fig, axes = report.figure(1, len(modes), height=5.2, sharey=True)
for ax, mode in zip(axes[0], modes):
    y = {m: len(shown) - 1 - i for i, m in enumerate(shown)}
    offsets = np.linspace(-0.25, 0.25, len(names) + 1)
    for j, d in enumerate(names):
        part = ratios[(ratios.dataset == d) & (ratios.truth_mode == mode) & (ratios.method.isin(shown))]
        ax.scatter(part.ratio, [y[m] + offsets[j] for m in part.method], marker=markers[d],
                   c=[report.method_color(m) for m in part.method], s=36, edgecolors="black", linewidths=0.4,
                   label=f"ours: {d}", zorder=3)
    if mode == "full":  # the paper scores against the full data only
        for k, llm in enumerate(paper_llms):
            pp = paper[(paper.llm == llm) & (paper.dataset == "Avg.") & (paper.method.isin(shown))]
            ax.scatter(pp.ratio, [y[m] + offsets[-1] for m in pp.method], marker=paper_markers[llm],
                       facecolors="none", edgecolors="black", s=44, linewidths=1.0,
                       label=f"paper: {llm} (mean of 5 datasets)", zorder=3)
    ax.axvline(1.0, color="0.3", lw=1, ls="--", label="TS (ratio 1)")
    ax.set_xscale("log")
    ax.set_xticks([0.2, 0.3, 0.5, 1, 2, 5, 10, 20], ["0.2", "0.3", "0.5", "1", "2", "5", "10", "20"])
    ax.minorticks_off()
    ax.set_yticks(list(y.values()), list(y.keys()))
    ax.set_title(f"truth: {report.TRUTH_LABELS[mode]}")
    ax.set_xlabel(f"{report.column_label(metric)} / TS's (log scale)")
handles = [report.marker_handle(markers[d]) for d in names] + \
    [report.marker_handle(paper_markers[llm], filled=False) for llm in paper_llms]
labels = [f"ours, {d}" for d in names] + [f"paper, {llm}" for llm in paper_llms]
report.legend_outside(fig, where="below", handles=handles, labels=labels, ncol=3)
report.check_fits_column(fig)
results.write_figure(fig, out / "headline_ratios.png")
results.glue_figure("sum_headline_fig", fig)

# %% [markdown]
# ## Numbers for the "What we found" box

# %%
h = findings.headline(runs, metric)
results.write_table(pd.DataFrame({"name": list(h), "value": [str(v) for v in h.values()]}), out / "headline.csv", prov)
for k, v in h.items():
    glue(f"sum_{k}", v, display=False)
glue("sum_metric", report.column_label(metric), display=False)
for mode in modes:
    for k, v in findings.verdicts(h, mode).items():
        glue(f"sum_verdict_{k}_{mode}", v, display=False)
glue("sum_datasets_text", ", ".join(names), display=False)
for mode in modes:
    for key in ("best_llm_ratio", "mnl_ratio", "tkft_ratio", "dsa_ratio", "floor_ratio", "best_paper_method_ratio",
                "tkft_ratio_min", "tkft_ratio_max"):
        glue(f"sum_{key}_{mode}_text", report.format_number(h[f"{key}_{mode}"], 2), display=False)
    glue(f"sum_best_llm_vs_mnl_{mode}_pct", report.format_share(h[f"best_llm_vs_mnl_{mode}"] - 1), display=False)
paper_dsa = paper[(paper.method == "DSA") & (paper.dataset == "Avg.")].set_index("llm").ratio
paper_tkft = paper[(paper.method == "TKFT") & (paper.dataset == "Avg.")].set_index("llm").ratio
ts_full = ratios[(ratios.method == "TS") & (ratios.truth_mode == "full")].error
paper_ts = paper.drop_duplicates("dataset").set_index("dataset").ts_error.drop("Avg.", errors="ignore")
glue("sum_ts_error_range_full", f"{report.format_number(ts_full.min())}–{report.format_number(ts_full.max())}",
     display=False)
glue("sum_paper_ts_error_range", f"{paper_ts.min():.3f}–{paper_ts.max():.3f}", display=False)  # as printed
glue("sum_paper_dsa_ratio_range", f"{report.format_number(paper_dsa.min(), 2)}–{report.format_number(paper_dsa.max(), 2)}",
     display=False)
glue("sum_paper_tkft_ratio_range", f"{report.format_number(paper_tkft.min(), 2)}–{report.format_number(paper_tkft.max(), 2)}",
     display=False)
display(report.table(pd.DataFrame({"name": list(h), "value": list(h.values())}), caption="Headline numbers",
                     max_rows=60))

# %% [markdown]
# ## Better than TS and data savings at the Enhancement size
#
# From the robustness study (share of evaluated subgroups where a method is closer
# to the truth than `TS`, the paper's Table 3) and the data-efficiency study (the
# `TS` training size that matches a method's error, the paper's Figure 3), at the
# same training size as the Enhancement runs.

# %%
facts = findings.scale_facts(enhancement_dir, datasets)
results.write_table(facts, out / "scale.csv", prov)
n_train = int(facts.n.iloc[0])
better = findings.load_better_than_ts(robustness_dir, train_size=n_train)
better = better[better.dataset.isin(names)]


def per_truth(frame, mode, value, **kwargs):
    """Methods by dataset for one truth: both truths side by side are wider than the book's column."""
    t = frame[frame.truth_mode == mode].pivot_table(index="method", columns="dataset", values=value, sort=False, **kwargs)
    return t[[d for d in names if d in t.columns]]


for mode in modes:
    bt = per_truth(better, mode, "share")
    better_table = report.table(bt.rename_axis("method").reset_index(), shares=list(bt.columns),
                                caption=f"Truth: {report.TRUTH_LABELS[mode]}. Share of evaluated subgroups closer to "
                                        f"the truth than TS (n = {n_train})")
    display(better_table)
    glue(f"sum_better_table_{mode}", better_table, display=False)

savings = findings.load_data_savings(data_efficiency_dir, n=n_train)
savings = savings[savings.dataset.isin(names)]
for mode in modes:
    sv = per_truth(savings, mode, "saving_shown", aggfunc="first")
    sv = sv.drop(index=[m for m in ("TS", "floor") if m in sv.index])
    savings_table = report.table(
        sv.rename_axis("method").reset_index(), missing="not computed",
        caption=f"Truth: {report.TRUTH_LABELS[mode]}. Data saving: share of the n = {n_train} training respondents "
                f"TS would not need to match the method",
        notes=["\"> x%\": the method's error is below TS's at every training size of the TS curve's grid, so the "
               "saving is at least x%. \"none\": the method is worse than TS even at the grid's smallest size."])
    display(savings_table)
    glue(f"sum_savings_table_{mode}", savings_table, display=False)

# %% [markdown]
# ## Generation beside the paper's Table 2
#
# Generation has no training sample of the test question, so the yardstick is the
# untrained model (`Direct`): each method's error as a ratio to `Direct`'s, averaged over
# the three splits (unseen questions, unseen population, both), ours and the paper's.

# %%
gen = findings.generation_ratios(generation_dir, paper_generation_table, metric="jsd" if metric == "jsd_mean" else "wd")
results.write_table(gen, out / "generation_ratios.csv", prov)
gen_avg = gen[gen.split == "Avg"].pivot_table(index="method", columns="source", values="ratio", sort=False)
gen_table = report.table(gen_avg.rename_axis(columns=None).rename_axis("method").reset_index(),
                         caption="Generation: error as a ratio to Direct, mean over the three splits",
                         missing="the paper does not report this method")
display(gen_table)
glue("sum_generation_table", gen_table, display=False)
ours_gen = [c for c in gen_avg.columns if c.startswith("ours")]
for m in ("TKFT", "DSA"):
    if ours_gen and m in gen_avg.index:
        glue(f"sum_gen_{m.lower()}_ratio", float(gen_avg.loc[m, ours_gen[0]]), display=False)
    if "paper, Qwen3-4B" in gen_avg.columns and m in gen_avg.index:
        glue(f"sum_gen_paper_{m.lower()}_ratio", float(gen_avg.loc[m, "paper, Qwen3-4B"]), display=False)

# %% [markdown]
# ## Scale of these runs

# %%
scale_table = report.table(facts.drop(columns=["model"]).rename(columns={"truth_median": "truth respondents per subgroup (median)",
                                                 "train_median": "training respondents per subgroup (median)",
                                                 "subgroups": "evaluated subgroups"}),
                           caption=f"Size of each Enhancement run (model: {', '.join(sorted(facts.model.dropna().unique()))})")
display(scale_table)
glue("sum_scale_table", scale_table, display=False)
glue("sum_n_train", n_train, display=False)
glue("sum_model", ", ".join(sorted(facts.model.dropna().unique())), display=False)
glue("sum_train_median_range",
     f"{report.format_number(facts.train_median.min())}–{report.format_number(facts.train_median.max())}", display=False)
glue("sum_respondents_range",
     f"{facts.respondents.min():,}–{facts.respondents.max():,}", display=False)
# %% [markdown]
# ## Survey weights
#
# The same dataset run twice: without weights, and with the survey's respondent
# weight in the truth and in the training distributions (each training subgroup
# keeps its number of respondents as its size). How much does weighting change
# each method's error (JSD, mean over questions and seeds) and the ranking?

# %%
if cfg.weighting_runs:
    unweighted_run, weighted_run = cfg.weighting_runs
    wt = findings.weighting_effect(unweighted_run, weighted_run, enhancement_dir, metric)
    results.write_table(wt, out / "weighting.csv", prov)
    for mode in wt.truth_mode.unique():
        w = wt[wt.truth_mode == mode].drop(columns="truth_mode")
        tbl = report.table(w.rename(columns={"unweighted": f"JSD, {unweighted_run}", "weighted": f"JSD, {weighted_run}",
                                             "rank_unweighted": "rank, unweighted", "rank_weighted": "rank, weighted"}),
                           caption=f"Truth: {report.TRUTH_LABELS[mode]}. Survey weights: error and rank of each method "
                                   "(rank 1 = lowest error)", shares=("relative_change",))
        display(tbl)
        glue(f"sum_weighting_{mode}_table", tbl, display=False)
    moved = wt[wt.rank_unweighted != wt.rank_weighted]
    glue("sum_weighting_rank_changes", int(len(moved)), display=False)
    glue("sum_weighting_rows", int(len(wt)), display=False)
    glue("sum_weighting_max_relative_change", float(wt.relative_change.abs().max()), display=False)
    glue("sum_weighting_best", "; ".join(
        f"{report.TRUTH_LABELS[m]} truth: {g.loc[g.unweighted.idxmin(), 'method']} unweighted, "
        f"{g.loc[g.weighted.idxmin(), 'method']} weighted" for m, g in wt.groupby("truth_mode", sort=False)),
        display=False)
meta = results.write_metadata(out.path, study="summary", params=params)
final_dir = out.commit()  # the tables replace the output folder's previous ones as one set
