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
# # Unseen backgrounds: error per subgroup, rare and absent subgroups (paper section 3.6, Figure 4)
#
# The Enhancement protocol (see the `enhancement` study) scores every method
# on every truth subgroup with at least `min_eval_size` respondents. Here the
# per-subgroup errors are sorted by the subgroup's size in the truth, and each
# subgroup evaluation is marked *absent* when the training sample had no
# respondent in it (`train_n == 0`; TS then predicts the pooled training
# distribution). The errors are summarised by bins of truth size and by
# absent/present, for both truth modes.
#
# The runs are read from the shared result stores of the Enhancement
# configuration given here: with the same settings as
# `params/enhancement/<dataset>.yaml` nothing is recomputed when that study
# ran first, and a missing result is computed (and stored for the others).

# %%
import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from dsalib import config, efficiency, experiments, methods as method_registry, report, results, study

report.style()
results.use_png_figures()  # glued figures carry a PNG for the book
_names_before_parameters = set(globals())

# %% tags=["parameters"]
# Every setting of this study (dsalib.config.UnseenBackgroundsConfig; papermill overrides them with
# -f params/unseen_backgrounds/<name>.yaml, -p name value for text and numbers, -y "name: [a, b]" for lists).
# The Enhancement settings must match params/enhancement/<dataset>.yaml for its stored results to be reused.
dataset = "ess9"  # a spec in params/datasets
questions = None  # core questions; None means every question of the dataset
background = None  # background attributes; None means the default set of the source
data_dir = None  # folder with downloaded archive files (None means DSA_DATA_DIR or data/)
source = "auto"  # which source of the spec: auto (the archive file if present), file or embedded
n = 500  # training sample size
seeds = [0, 1, 2, 3, 4]  # one training sample per seed
modes = ["full", "heldout"]  # ground truth: full (the paper) and/or heldout
methods = ["TS", "MNL", "POLR", "EB-MNL", "Direct", "PE", "AAE", "TKFT", "DSA", "EB-TKFT", "EB-DSA"]
model = "smollm2-135m"  # embedded name, local path or hub id
chat_template = False  # wrap prompts in the model's chat template (instruct models); False: the paper's prompt
template = "default"  # prompt template of Direct, AAE, TKFT and DSA (PE uses persona)
phase1 = {}  # dsalib.train.Phase1Config fields
phase2 = {}  # dsalib.train.Phase2Config fields
strategy = "last_layer"  # fine-tuning strategy: last_layer, lora or full
min_eval_size = 10  # smallest truth subgroup that is evaluated
weighted_truth = False  # weight the truth by the survey's respondent weights
weighted_train = False  # weight the training distributions too (each subgroup keeps its respondent count as its size)
size_bins = [10, 20, 50, 100]  # lower edges of the truth-size bins; the last bin is open
figure_methods = ["TS", "MNL", "TKFT", "DSA", "EB-DSA"]  # methods drawn in the per-subgroup figure
prefix_cache = "cache/prefix"  # on-disk cache of frozen-prefix activations; None keeps it in memory only
prefix_cache_bytes = 8589934592  # 8 GiB: in-memory frozen-prefix cache budget (least recently used go first); None: unbounded
prefix_batch_size = None  # prompts per frozen-prefix pass; None: the model's batch size
device_map = None  # accelerate placement over GPUs/CPU/disk: auto, balanced, balanced_low_0, sequential; None: one device
store_root = "cache/runs"  # shared resumable result stores; None keeps them in output_dir
output_dir = None  # None means runs/unseen_backgrounds/<dataset>/ (git-ignored); relative paths are under the repository root

# %% [markdown]
# Every parameter is checked before anything runs: unknown names, methods,
# questions or truth modes, size bins that do not increase, and figure methods
# that are not among the methods stop here with a message that names them.

# %%
cfg = config.from_notebook("unseen_backgrounds", globals(), _names_before_parameters)
run = study.prepare(cfg)
survey, qs, attrs, out, store_root = run.survey, run.questions, run.attributes, run.out, run.store_root
efficiency.check_sizes(survey, qs, attrs, [n], modes, min_eval_size, "n")
display(Markdown(f"**Data:** `{dataset}` from {survey.source_name}, {survey.n_respondents:,} respondents; "
                 f"background {', '.join(attrs)}; questions {', '.join(qs)}; training size n = {n}; "
                 f"samples {seeds}; truth modes {modes}; truth-size bins {efficiency.size_bin_labels(size_bins)}."))

# %%
enh_cfg = cfg.enhancement()
pending = efficiency.pending_count(enh_cfg, modes, store_root, survey)
display(Markdown(f"Results still to compute: {pending} (0 means everything is read back from the shared stores)."))
lm = None
if pending and any(method_registry.needs_model(m) for m in methods):
    from dsalib.llm_methods import LanguageModel

    lm = LanguageModel.from_config(cfg)
res = experiments.run_enhancement(enh_cfg, lm=lm, store_root=store_root, survey=survey)
option_rule = efficiency.stored_option_rule(res)
uses_model = any(method_registry.needs_model(m) for m in methods)
per = experiments.load_per_subgroup_modes(enh_cfg, store_root=store_root, survey=survey)
per = efficiency.with_presence(per)
prov = results.provenance(survey, model=model if uses_model else None, option_rule=option_rule, seeds=seeds, n=n,
                          template=template)
keep = ["truth_mode", "question", "seed", "method", "subgroup", "n", "train_n", "absent", "jsd", "wd", "wd_scaled",
        "ts_jsd", "better_than_ts"]
results.write_table(per[keep], out / "per_subgroup.csv", prov)
meta = results.write_metadata(out, study="unseen_backgrounds", params=cfg.to_params(), option_rule=option_rule,
                              computed=pending,
                              data=survey.describe(),
                              stores=[str(experiments.store_dir_for(enh_cfg, m, store_root, survey)) for m in modes])

# %% [markdown]
# ## How many subgroups are absent from the training sample
#
# Per truth mode: the evaluated subgroups (truth size at least
# `min_eval_size`) of every question and sample, and how many of them had no
# respondent in the training sample.

# %%
counts = efficiency.absent_counts(per)
results.write_table(counts.reset_index(), out / "absent_counts.csv", prov)
display(report.table(counts.reset_index().rename(columns={
    "evaluations": "subgroup evaluations", "absent": "absent from the training sample", "absent_share": "share absent",
    "absent_distinct_subgroups": "distinct absent subgroups", "truth_n_of_absent_median": "median truth size (absent)",
    "truth_n_of_absent_max": "largest truth size (absent)"}), shares=["share absent"],
    caption="Subgroup evaluations (question × training sample × subgroup) absent from the training sample",
    missing="no absent subgroup"))
for mode, row in counts.iterrows():
    glue(f"ub_{dataset}_{mode}_evaluations", int(row.evaluations), display=False)
    glue(f"ub_{dataset}_{mode}_absent", int(row.absent), display=False)
    glue(f"ub_{dataset}_{mode}_absent_share", float(row.absent_share), display=False)
glue(f"ub_{dataset}_n", int(n), display=False)
glue(f"ub_{dataset}_questions", ", ".join(qs), display=False)
glue(f"ub_{dataset}_n_respondents", int(survey.n_respondents), display=False)

# %% [markdown]
# ## Error of subgroups absent from and present in the training sample
#
# Mean JSD over subgroup evaluations, and the share of evaluations where the
# method is closer to the truth than TS on the same subgroup and sample (for an
# absent subgroup TS predicts the pooled training distribution). The `floor` rows
# are the noise floor: a same-size bootstrap of each truth subgroup against itself.
# With fewer than `efficiency.MIN_ABSENT_TO_COMPARE` absent evaluations the
# sentence says the absent rows are too few to compare methods on.

# %%
by_presence = efficiency.subgroup_summary(per)
results.write_table(by_presence, out / "by_presence.csv", prov)
labels = {"absent from training": "absent", "in training": "present"}
for mode in modes:
    sentence = efficiency.absent_sentence(counts, by_presence, mode, figure_methods)
    display(Markdown(f"{report.TRUTH_LABELS[mode].capitalize()} truth: {sentence}"))
    glue(f"ub_{dataset}_{mode}_absent_text", sentence, display=False)
    t = by_presence[by_presence.truth_mode == mode]
    wide = pd.DataFrame(index=pd.Index(report.method_order(t.method), name="method"))
    for key, short in labels.items():
        part = t[t.presence == key].set_index("method")
        n_eval = int(part.evaluations.max()) if "evaluations" in part and len(part) else 0
        wide[f"JSD, {short} ({n_eval:,} evaluations)"] = part.jsd_mean.reindex(wide.index)
        wide[f"better than TS, {short}"] = part.better_than_ts.reindex(wide.index)
    if "TS" in wide.index:  # TS against itself: no share
        wide.loc["TS", [c for c in wide.columns if c.startswith("better")]] = np.nan
    tbl = report.table(wide, shares=[c for c in wide.columns if c.startswith("better")],
                       caption=f"Truth: {report.TRUTH_LABELS[mode]}. Subgroups absent from and present in the "
                               f"training sample: mean JSD and share of evaluations better than TS",
                       missing="not applicable (TS against itself, or the noise floor), or no evaluation")
    display(tbl)
    glue(f"ub_{dataset}_{mode}_presence_table", tbl, display=False)
    for r in t.itertuples():
        tag = "absent" if r.presence.startswith("absent") else "present"
        glue(f"ub_{dataset}_{mode}_{r.method}_{tag}_jsd", float(r.jsd_mean), display=False)
        if not np.isnan(r.better_than_ts):
            glue(f"ub_{dataset}_{mode}_{r.method}_{tag}_better", float(r.better_than_ts), display=False)

# %% [markdown]
# ## Error by truth subgroup size
#
# Mean JSD per bin of truth size (all subgroups, absent or not).

# %%
by_size = efficiency.subgroup_summary(per, edges=size_bins, presence=False)
results.write_table(by_size, out / "by_size.csv", prov)
for mode in modes:
    t = by_size[by_size.truth_mode == mode]
    wide = t.pivot(index="method", columns="size_bin", values="jsd_mean")
    wide = wide.loc[report.method_order(wide.index)]
    sizes_row = t[t.method == "floor"].set_index("size_bin").evaluations
    wide.columns = [f"{c} ({int(sizes_row.get(c, 0)):,})" for c in wide.columns]
    tbl = report.table(wide.rename_axis("method").reset_index(),
                       caption=f"Truth: {report.TRUTH_LABELS[mode]}. Mean JSD by truth subgroup size "
                               f"(in brackets: evaluations per size bin)")
    display(tbl)
    glue(f"ub_{dataset}_{mode}_size_table", tbl, display=False)

# %%
show = report.method_order(list(figure_methods) + ["floor"])
fig, axes = report.figure(len(modes), 1, height=3.6 * len(modes), sharey=True)
for ax, mode in zip(axes[:, 0], modes):
    t = by_size[(by_size.truth_mode == mode) & by_size.method.isin(show)]
    bins = [str(b) for b in t.size_bin.cat.categories] if hasattr(t.size_bin, "cat") else list(dict.fromkeys(t.size_bin))
    t = t.assign(size_bin=t.size_bin.astype(str))
    report.option_bars(ax, {m: t[t.method == m].set_index("size_bin").jsd_mean.reindex(bins).to_numpy() for m in show},
                       bins, xlabel="truth subgroup size", ylabel="mean JSD")
    ax.set_title(f"truth: {report.TRUTH_LABELS[mode]}")
report.legend_outside(fig, where="below", ncol=min(len(show), 6))
report.check_fits_column(fig)
results.write_figure(fig, out / "jsd_by_size.png")
results.glue_figure(f"ub_{dataset}_size_fig", fig)

# %% [markdown]
# ## Per-subgroup error sorted by size (paper Fig. 4)
#
# One panel per question (first sample, first truth mode): subgroups from the
# rarest (left) to the largest (right), one marker per subgroup and method
# (subgroups are independent, so no line joins them); shaded columns and crosses
# on the axis mark subgroups absent from the training sample.

# %%
mode0, seed0 = modes[0], seeds[0]
markers = dict(zip(show, ["o", "s", "D", "^", "v", "P", "X", "*"]))
fig, axes = report.figure(len(qs), 1, height=3.2 * len(qs))
for ax, q in zip(axes[:, 0], qs):
    d = efficiency.ordered_by_size(per, mode0, q, seed0)
    absent_ranks = d[(d.method == "floor") & d.absent]["rank"].to_numpy()
    for r in absent_ranks:
        ax.axvspan(r - 0.5, r + 0.5, color="orange", alpha=0.18, lw=0)
    for m in show:
        dm = d[d.method == m]
        ax.plot(dm["rank"], dm.jsd, marker=markers.get(m, "o"), ms=4, ls="", color=report.method_color(m),
                label="noise floor" if m == "floor" else m)
    if len(absent_ranks):
        ax.plot(absent_ranks, np.zeros(len(absent_ranks)), "x", color="darkorange", ms=7,
                label="absent from training")
    sizes = d[d.method == "floor"].sort_values("rank")
    step = max(1, len(sizes) // 10)
    ax.set_xticks(sizes["rank"].to_numpy()[::step], sizes.n.to_numpy()[::step])
    ax.set_title(f"{q} ({report.TRUTH_LABELS[mode0]} truth, sample {seed0}): {len(sizes)} subgroups, "
                 f"{len(absent_ranks)} absent")
    ax.set_ylabel("JSD")
axes[-1, 0].set_xlabel("subgroups sorted by truth size (tick labels: truth n)")
report.legend_outside(fig, where="below", ncol=4)
report.check_fits_column(fig)
results.write_figure(fig, out / "per_subgroup_sorted.png")
results.glue_figure(f"ub_{dataset}_sorted_fig", fig)

# %% [markdown]
# ## The paper's numbers, for reference only
#
# DSA paper section 3.6 and Figure 4 (Qwen3-4B, two ESS11 cases): DSA
# "substantially reduces JSD for rare groups and remains accurate even when a
# background is entirely absent from the training set"; the figure is read
# from curves, without a table. Table 3 of the paper (share of backgrounds
# where a method beats the training set) gives DSA 96.40% on ESS9, TKFT 48.40%
# and AAE 52.40%. The paper uses the full ESS (tens of thousands of
# respondents, training samples of 4,000) and a 4B model; the runs above use a
# 135M model on the embedded extracts, so the numbers are not comparable one to
# one.

# %%
final_dir = out.commit()  # the tables replace the output folder's previous ones as one set
display(Markdown(f"Tables written to `{out.shown}`."))
