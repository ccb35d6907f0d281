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
# # Data efficiency: how much survey data a method saves (paper sections 3.5 and 3.8, Figures 3 and 6)
#
# The training-sample baseline TS (each subgroup's answer distribution in the
# training sample) is scored on a grid of training sizes, many samples per
# size: its mean error per size is the *TS curve*. A method trained on `n`
# respondents whose mean error is `e` has a *TS-equivalent size*: the size at
# which the TS curve reaches `e` (linear interpolation on the running minimum
# of the curve); its *data saving* is `1 - n / n_TS`. An error below the TS
# curve's last point or above its first is reported as a labelled bound, never
# extrapolated. Errors are averaged over samples per question, then over
# questions, and every comparison uses the TS curve of the same questions.
#
# Three parts, all through `dsalib.experiments.run_enhancement` and its shared
# result stores (a configuration another study has already run is read back):
# 1. every method at the reference size `n` (the same configuration as the
#    `enhancement` study, so with warm stores this costs nothing);
# 2. the TS grid (`ts_sizes`, `ts_n_seeds` samples each);
# 3. a few methods across training sizes (`curve_sizes`) on a few questions
#    and samples (paper Fig. 6).
#
# Both truth modes are reported. In the `full` truth (the paper's) the truth
# contains the training sample, so TS gets closer to it the larger the sample
# is (at the full data it is exact): this flatters TS at large sizes and makes
# the TS-equivalent sizes of the other methods smaller. The `heldout` truth
# (respondents outside the sample) has no such overlap.

# %%
import time

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
from IPython.display import Markdown, display
from matplotlib.patches import Patch
from myst_nb import glue

from dsalib import config, efficiency, experiments, methods as method_registry, report, results, study

report.style()
results.use_png_figures()  # glued figures carry a PNG for the book
_names_before_parameters = set(globals())

# %% tags=["parameters"]
# Every setting of this study (dsalib.config.DataEfficiencyConfig; papermill overrides them with
# -f params/data_efficiency/<name>.yaml, -p name value for text and numbers, -y "name: [a, b]" for lists).
dataset = "ess9"  # a spec in params/datasets
questions = None  # questions of the comparison at the reference size; None means every question of the dataset
background = None  # background attributes; None means the default set of the source
data_dir = None  # folder with downloaded archive files (None means DSA_DATA_DIR or data/)
source = "auto"  # which source of the spec: auto (the archive file if present), file or embedded
n = 500  # reference training size (the enhancement study uses the same)
seeds = [0, 1, 2, 3, 4]  # training samples at the reference size
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
metric = "jsd_mean"  # the error compared: jsd_mean, jsd_wmean, wd_mean, wd_wmean, wd_scaled_mean or wd_scaled_wmean
ts_sizes = [50, 100, 150, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500]  # the TS grid of training sizes
ts_n_seeds = 20  # TS samples per grid size (seeds 0, 1, and so on)
curve_sizes = [100, 250, 500, 1000]  # training sizes of the methods across sizes (paper Fig. 6)
curve_methods = ["TS", "MNL", "AAE", "TKFT", "DSA", "EB-DSA"]  # methods run across sizes
curve_questions = None  # questions of the runs across sizes; None means the questions above
curve_seeds = [0, 1, 2]  # training samples of the runs across sizes
prefix_cache = "cache/prefix"  # on-disk cache of frozen-prefix activations; None keeps it in memory only
prefix_cache_bytes = 8589934592  # 8 GiB: in-memory frozen-prefix cache budget (least recently used go first); None: unbounded
prefix_batch_size = None  # prompts per frozen-prefix pass; None: the model's batch size
device_map = None  # accelerate placement over GPUs/CPU/disk: auto, balanced, balanced_low_0, sequential; None: one device
store_root = "cache/runs"  # shared resumable result stores; None keeps them in output_dir
output_dir = None  # None means runs/data_efficiency/<dataset>/ (git-ignored); relative paths are under the repository root

# %% [markdown]
# Every parameter is checked before anything runs: unknown names, methods,
# questions or truth modes, a metric that is not a run summary, and training
# sizes larger than the respondents who answered a question (leaving
# `min_eval_size` for the heldout truth) stop here with a message that names them.

# %%
cfg = config.from_notebook("data_efficiency", globals(), _names_before_parameters)
run = study.prepare(cfg, more_questions=[curve_questions])
survey, qs, attrs, out, store_root = run.survey, run.questions, run.attributes, run.out, run.store_root
cqs = list(curve_questions) if curve_questions is not None else qs
grid_qs = list(dict.fromkeys(qs + cqs))
ts_sizes = efficiency.check_sizes(survey, grid_qs, attrs, ts_sizes, modes, min_eval_size, "ts_sizes", at_least=2)
curve_sizes = efficiency.check_sizes(survey, cqs, attrs, curve_sizes, modes, min_eval_size, "curve_sizes")
efficiency.check_sizes(survey, qs, attrs, [n], modes, min_eval_size, "n")
display(Markdown(
    f"**Data:** `{dataset}` from {survey.source_name}, {survey.n_respondents:,} respondents. "
    f"**Reference size** n = {n}: questions {', '.join(qs)}; samples {seeds}; methods {', '.join(methods)}. "
    f"**TS grid:** sizes {ts_sizes}, {ts_n_seeds} samples each, questions {', '.join(grid_qs)}. "
    f"**Across sizes:** {curve_sizes} for {', '.join(curve_methods)} on {', '.join(cqs)}, samples {curve_seeds}. "
    f"**Error:** `{metric}`; truth modes {list(modes)}."))

# %%
ref_cfg = cfg.enhancement()
ts_cfg = cfg.enhancement(questions=grid_qs, methods=["TS"], seeds=list(range(ts_n_seeds)))
curve_cfg = cfg.enhancement(questions=cqs, methods=curve_methods, seeds=curve_seeds)
pending = efficiency.pending_count(ref_cfg, modes, store_root, survey) + sum(
    efficiency.pending_count(curve_cfg.replace(n=s), modes, store_root, survey) for s in curve_sizes)
display(Markdown(f"Method results still to compute (reference size and across sizes): {pending}; "
                 "0 means they are all read back from the shared stores."))
lm = None
uses_model = any(method_registry.needs_model(m) for m in methods + curve_methods)
if pending and uses_model:
    from dsalib.llm_methods import LanguageModel

    lm = LanguageModel.from_config(cfg)
stage_seconds = {}
t0 = time.perf_counter()
ref = efficiency.run_sizes(ref_cfg, [n], modes, store_root, lm=lm, survey=survey)
stage_seconds["reference_size"] = time.perf_counter() - t0
t0 = time.perf_counter()
ts = efficiency.run_sizes(ts_cfg, ts_sizes, modes, store_root, lm=lm, progress=None, survey=survey)
stage_seconds["ts_grid"] = time.perf_counter() - t0
t0 = time.perf_counter()
across = efficiency.run_sizes(curve_cfg, curve_sizes, modes, store_root, lm=lm, survey=survey)
stage_seconds["across_sizes"] = time.perf_counter() - t0
display(Markdown("Wall time per part (seconds; results already in the shared stores are read back, not recomputed): "
                 + ", ".join(f"{k} {v:.1f}" for k, v in stage_seconds.items())))
option_rule = efficiency.stored_option_rule(pd.concat([ref, across], ignore_index=True))
prov = results.provenance(survey, model=model if uses_model else None, option_rule=option_rule, seeds=seeds, n=n,
                          metric=metric, template=template)
prov_ts = {**prov, "seeds": " ".join(str(s) for s in range(ts_n_seeds))}
prov_curve = {**prov, "seeds": " ".join(str(s) for s in curve_seeds)}
results.write_table(results.scalar_columns(ref), out / "reference_results.csv", prov)
results.write_table(results.scalar_columns(ts), out / "ts_grid_results.csv", prov_ts)
results.write_table(results.scalar_columns(across), out / "across_sizes_results.csv", prov_curve)
meta = results.write_metadata(out, study="data_efficiency", params=cfg.to_params(), option_rule=option_rule,
                              computed=pending,
                              data=survey.describe(), stage_seconds=stage_seconds,
                              stores=sorted({str(experiments.store_dir_for(ref_cfg.replace(n=s), m, store_root, survey))
                                             for s in set(ts_sizes) | set(curve_sizes) | {n} for m in modes}))

# %% [markdown]
# ## The TS curve
#
# Mean error of TS over the questions of the reference comparison, per
# training size and truth mode, ± the sample-to-sample standard deviation
# (mean over questions). The noise floor is the error of a same-size bootstrap
# of each truth subgroup against itself, at the reference size.
#
# **Why the curve can rise at small sizes.** A subgroup with no respondent in a
# small training sample gets the pooled answer distribution of the whole sample
# (TS's fallback). The smallest samples leave many subgroups absent, so their
# pooled predictions are smooth and not far from most subgroups; a slightly
# larger sample fills some of those subgroups with one or two respondents, whose
# distributions are much noisier. The mean error can therefore go up before it
# goes down. The TS-equivalent sizes below use the curve's running minimum, so
# a rise is read as flat, never as two sizes with the same error.

# %%
curve_ref = efficiency.ts_curve(ts, metric, qs)
results.write_table(curve_ref.assign(questions_used=", ".join(qs)), out / "ts_curve.csv", prov_ts)
curve_wide = pd.DataFrame({"training size": sorted(set(curve_ref.n))})
for mode in modes:
    c = curve_ref[curve_ref.truth_mode == mode].set_index("n")
    curve_wide[f"TS {report.column_label(metric)}, {report.TRUTH_LABELS[mode]}"] = [
        report.mean_sd(c.error.get(k), c.seed_sd.get(k)) for k in curve_wide["training size"]]
display(report.table(curve_wide, caption=f"The TS curve ({ts_n_seeds} samples per size, ± s.d. over samples)"))
rises = efficiency.curve_rises(curve_ref)
rise_text = ("Where the TS curve is higher than at a smaller size (read as flat): "
             + ("; ".join(f"{report.TRUTH_LABELS[r.truth_mode]} truth, n = {r.n_to:,} against n = {r.n_from:,} "
                          f"(+{report.format_number(r.rise)})" for r in rises.itertuples())
                or "nowhere; the curve falls throughout") + ".")
display(Markdown(rise_text))
glue(f"de_{dataset}_ts_rises_text", rise_text, display=False)
for mode in modes:
    glue(f"de_{dataset}_{mode}_ts_rises", int((rises.truth_mode == mode).sum()), display=False)
floor_ref = ref[ref.method == "floor"].groupby("truth_mode")[metric].mean()
display(Markdown("Noise floor at the reference size: "
                 + ", ".join(f"{report.TRUTH_LABELS[m]} truth {report.format_number(v)}" for m, v in floor_ref.items())))
for mode in modes:
    c = curve_ref[curve_ref.truth_mode == mode]
    glue(f"de_{dataset}_{mode}_ts_first", float(c.error.iloc[0]), display=False)
    glue(f"de_{dataset}_{mode}_ts_last", float(c.error.iloc[-1]), display=False)
glue(f"de_{dataset}_ts_grid", f"{ts_sizes[0]:,} to {ts_sizes[-1]:,} ({len(ts_sizes)} sizes, {ts_n_seeds} samples each)",
     display=False)
glue(f"de_{dataset}_n", int(n), display=False)
glue(f"de_{dataset}_n_respondents", int(survey.n_respondents), display=False)
glue(f"de_{dataset}_questions", ", ".join(qs), display=False)

# %% [markdown]
# ## TS-equivalent size and data saving at the reference size (paper Fig. 3)
#
# One row per method and truth mode: the method's error at `n`, the TS size
# that reaches it, and the saving `1 - n / n_TS`. The last column says whether the
# size was interpolated inside the TS grid or is only bounded (the method
# beats TS at every grid size, or is worse than TS at the smallest: then it saves
# no data). The `floor` row is the truth's own noise (no method): its TS-equivalent
# size says how large a TS sample would be as close to the truth as the truth's
# bootstrap; it has no saving.

# %%
equiv = efficiency.equivalent_sizes(ref, ts, metric)
equiv[["ts_equivalent", "saving_text"]] = equiv.apply(efficiency.describe_equivalent, axis=1, result_type="expand")
results.write_table(equiv, out / "equivalent_sizes.csv", prov)
for mode in modes:
    t = equiv[equiv.truth_mode == mode]
    shown = pd.DataFrame({"method": t.method,
                          report.column_label(metric): [report.mean_sd(e, sd) for e, sd in zip(t.error, t.seed_sd)],
                          "TS-equivalent n": t.ts_equivalent, "data saving": t.saving_text,
                          "how the size was found": t.status})
    tbl = report.table(shown, caption=f"Truth: {report.TRUTH_LABELS[mode]}. Methods at n = {n} against the TS curve "
                                      f"(grid {t.ts_grid.iloc[0]}); error ± s.d. over training samples")
    display(tbl)
    glue(f"de_{dataset}_{mode}_equiv_table", tbl, display=False)
    for m, row in t.set_index("method").iterrows():
        glue(f"de_{dataset}_{mode}_{m}_error", float(row["error"]), display=False)
        glue(f"de_{dataset}_{mode}_{m}_equiv", row["ts_equivalent"], display=False)
        glue(f"de_{dataset}_{mode}_{m}_saving", row["saving_text"], display=False)
        glue(f"de_{dataset}_{mode}_{m}_status", row["status"], display=False)
outside = equiv[(equiv.status != efficiency.WITHIN) & (equiv.method != "floor")]
display(Markdown("Outside the TS grid (bounds only): "
                 + ("; ".join(f"{r.method} ({report.TRUTH_LABELS[r.truth_mode]}): {r.status}"
                              for r in outside.itertuples()) or "none")))

# %%
fig, axes = report.figure(1, len(modes), height=4.6, sharey=True)
grid_min, grid_max = min(ts_sizes), max(ts_sizes)
for ax, mode in zip(axes[0], modes):
    c = curve_ref[curve_ref.truth_mode == mode]
    ax.plot(c.n, c.error, color=report.method_color("TS"), marker="o", ms=3, label=f"TS curve ({ts_n_seeds} samples)")
    ax.fill_between(c.n, c.error - c.seed_sd, c.error + c.seed_sd, color=report.method_color("TS"), alpha=0.2)
    t = equiv[equiv.truth_mode == mode].set_index("method")
    for m in t.index:  # each method as one marker: at its TS-equivalent size, or at the grid's edge for a bound
        r = t.loc[m]
        if m == "floor":
            ax.axhline(r.error, color="black", ls=":", lw=1.2, label=f"noise floor at n = {n}")
            continue
        if m == "TS":
            continue
        x, marker = {efficiency.WITHIN: (r.ts_equivalent_n, "o"), efficiency.BEYOND: (grid_max, ">"),
                     efficiency.BELOW: (grid_min, "<")}[r.status]
        ax.plot([x], [r.error], marker=marker, ms=8, ls="", color=report.method_color(m),
                markeredgecolor="black", markeredgewidth=0.5, label=m)
    ax.axvline(n, color="0.4", lw=1, ls="--", label=f"data used (n = {n})")
    report.log_axis(ax, ts_sizes)
    ax.set_xlabel("TS training size (log scale)")
    ax.set_title(f"truth: {report.TRUTH_LABELS[mode]}")
axes[0][0].set_ylabel(f"{report.column_label(metric)}, mean over subgroups")
report.legend_outside(fig, where="below", ncol=4)
report.check_fits_column(fig)
results.write_figure(fig, out / "ts_curve.png")
results.glue_figure(f"de_{dataset}_ts_fig", fig)

# %%
bar = equiv[~equiv.method.isin(["floor", "TS"])].copy()
bar["shown_n"] = np.where(bar.status == efficiency.WITHIN, bar.ts_equivalent_n, bar.bound)
fig, axes = report.figure(1, len(modes), height=4.4, sharey=True)
for ax, mode in zip(axes[0], modes):
    b = bar[bar.truth_mode == mode].set_index("method").loc[lambda d: report.method_order(d.index)].reset_index()
    x = np.arange(len(b))
    bars = ax.bar(x, b.shown_n, color=[report.method_color(m) for m in b.method], edgecolor="black", lw=0.5)
    for rect, status in zip(bars, b.status):
        if status != efficiency.WITHIN:
            rect.set_hatch("//")
            rect.set_alpha(0.55)
    ax.axhline(n, color="black", lw=1, ls="--", label=f"data used (n = {n})")
    ax.set_xticks(x, b.method, rotation=35)
    ax.set_title(f"truth: {report.TRUTH_LABELS[mode]}")
axes[0][0].set_ylabel("TS-equivalent training size")
handles, labels = axes[0][0].get_legend_handles_labels()
report.legend_outside(fig, where="below", handles=handles + [Patch(facecolor="white", edgecolor="black", hatch="//")],
                      labels=labels + ["bound: outside the TS grid"])
report.check_fits_column(fig)
results.write_figure(fig, out / "equivalent_sizes.png")
results.glue_figure(f"de_{dataset}_equiv_fig", fig)

# %% [markdown]
# ## Error across training sizes (paper Fig. 6)
#
# A few methods at several training sizes on the questions and samples named
# in the parameters (fewer than at the reference size: these runs train the
# language model at every size). The wide grey line is the TS grid on the same
# questions (all its samples); each row also gets its TS-equivalent size and
# saving at its own training size.

# %%
by_size = efficiency.equivalent_sizes(across, ts, metric)
by_size[["ts_equivalent", "saving_text"]] = by_size.apply(efficiency.describe_equivalent, axis=1, result_type="expand")
results.write_table(by_size, out / "errors_by_size.csv", prov_curve)
for mode in modes:
    t = by_size[by_size.truth_mode == mode]
    err = t.assign(cell=[report.mean_sd(e, sd) for e, sd in zip(t.error, t.seed_sd)]).pivot(
        index="method", columns="n", values="cell")
    err.columns = [f"n = {c:,}" for c in err.columns]
    err_table = report.table(err.rename_axis("method").reset_index(),
                             caption=f"Truth: {report.TRUTH_LABELS[mode]}. {report.column_label(metric)} by training "
                                     f"size (questions {', '.join(cqs)}; ± s.d. over {len(curve_seeds)} samples)")
    sav = t[t.method != "floor"].pivot(index="method", columns="n", values="saving_text")
    sav.columns = [f"n = {c:,}" for c in sav.columns]
    sav_table = report.table(sav.rename_axis("method").reset_index(),
                             caption=f"Truth: {report.TRUTH_LABELS[mode]}. Data saving against the TS curve at each size")
    display(err_table)
    display(sav_table)
    glue(f"de_{dataset}_{mode}_size_table", err_table, display=False)
    glue(f"de_{dataset}_{mode}_size_saving_table", sav_table, display=False)
    for row in t.itertuples():
        glue(f"de_{dataset}_{mode}_{row.method}_n{row.n}_error", float(row.error), display=False)
        glue(f"de_{dataset}_{mode}_{row.method}_n{row.n}_saving", row.saving_text, display=False)
glue(f"de_{dataset}_curve_questions", ", ".join(cqs), display=False)
glue(f"de_{dataset}_curve_seeds", len(curve_seeds), display=False)

# %%
curve_cq = efficiency.ts_curve(ts, metric, cqs)
fig, axes = report.figure(1, len(modes), height=4.6, sharey=True)
for ax, mode in zip(axes[0], modes):
    c = curve_cq[curve_cq.truth_mode == mode]
    ax.plot(c.n, c.error, color="0.6", lw=4, alpha=0.6, label=f"TS grid ({ts_n_seeds} samples)")
    t = by_size[by_size.truth_mode == mode]
    for m in report.method_order(t.method):  # a line joins one method's sizes (an ordered axis)
        d = t[t.method == m].sort_values("n")
        ax.errorbar(d.n, d.error, yerr=d.seed_sd, marker="o", ms=4, capsize=2, lw=1.4, color=report.method_color(m),
                    ls=":" if m == "floor" else "-", label="noise floor" if m == "floor" else m)
    report.log_axis(ax, sorted(set(c.n) | set(t.n)))
    ax.set_xlabel("training size n (log scale)")
    ax.set_title(f"truth: {report.TRUTH_LABELS[mode]}")
axes[0][0].set_ylabel(f"{report.column_label(metric)}, mean over subgroups")
report.legend_outside(fig, where="below", ncol=4)
report.check_fits_column(fig)
results.write_figure(fig, out / "errors_by_size.png")
results.glue_figure(f"de_{dataset}_sizes_fig", fig)

# %% [markdown]
# ## The paper's numbers, for reference only
#
# DSA paper section 3.5 and Figure 3 (Qwen3-4B): DSA reaches the accuracy of
# the training sample while "saving at least 53.48%" of the training data on
# every dataset; AAE and TKFT save much less. Section 3.8 and Figure 6 report
# KL divergence across training sizes: DSA improves most consistently, and
# the gains of every method become marginal once the training set is large.
# The paper uses the full surveys (tens of thousands of respondents), a 4B
# model and KL on the `full` truth; the runs above use a 135M model on the
# embedded extracts, the JSD (or the chosen metric) and both truths, so the
# numbers are not comparable one to one.

# %%
final_dir = out.commit()  # the tables replace the output folder's previous ones as one set
display(Markdown(f"Tables written to `{out.shown}`."))
