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
# # Ablations: training phases, fine-tuning strategy and model (paper section 3.10, Table 5)
#
# Three comparisons on the Enhancement protocol (same training samples and truths as the enhancement study):
#
# 1. **Phase 1 vs Phase 1 + 2**: TKFT (Phase 1 only) against DSA (Phase 1 then
#    the distribution-shift alignment of Phase 2) with the default settings
#    (last-layer training, Phase 1 epochs chosen on a validation split), on
#    the questions and training samples of the enhancement study. DSA's
#    report says how many Hamming-1 training pairs Phase 2 used and whether the
#    validation guard kept it.
# 2. **Fine-tuning strategy**: only the last transformer block (`last_layer`,
#    the default, trained from a cached frozen prefix), LoRA adapters (`lora`)
#    or every weight (`full`). LoRA and full have no prefix cache and cost a full
#    forward and backward pass per prompt per epoch, so all three are run with
#    the **same fixed number of Phase 1 epochs** (`fixed_epochs`) at the same
#    learning rate (`fixed_lr`, higher than the default 5e-5, at which one
#    epoch barely moves a model) for a fair comparison; the last-layer row with epochs chosen on validation is shown
#    beside them.
# 3. **Model**: the embedded SmolLM2-135M and Gemma-3-270M (and any model in
#    `models`: embedded name, local folder or hub id in the local cache), each
#    with the default settings.
#
# The strategy and model comparisons run on a subset of questions and training
# samples (`subset_questions`, `subset_seeds`) because LoRA, full fine-tuning and
# larger models are slow on a CPU. Results go to the shared Enhancement stores, so runs with the settings of the
# enhancement study are reused, not refitted. Every table carries TS and the
# noise floor as reference rows. Logic lives in `dsalib.robustness`.

# %%
import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from dsalib import config, diagnostics, experiments, report, results, robustness, study

report.style()
results.use_png_figures()  # glued figures carry a PNG for the book
_names_before_parameters = set(globals())

# %% tags=["parameters"]
# Every setting of this study (dsalib.config.AblationsConfig; papermill overrides them with
# -f params/ablations/<name>.yaml, -p name value for text and numbers, -y "name: [a, b]" for lists).
dataset = "ess9"  # a spec in params/datasets
questions = None  # core questions of the phase comparison; None means every question of the dataset
background = None  # background attributes; None means the default set of the source
data_dir = None  # folder with downloaded archive files (None means DSA_DATA_DIR or data/)
source = "auto"  # which source of the spec: auto (the archive file if present), file or embedded
n = 500  # training sample size
seeds = [0, 1, 2, 3, 4]  # training samples of the phase comparison (as the enhancement study, so reused)
subset_questions = ["imbgeco"]  # questions of the strategy and model comparisons (lora, full and other models are slow)
subset_seeds = [0, 1]  # training samples of the strategy and model comparisons
modes = ["full", "heldout"]  # ground truth(s); each setting is fitted once for all
model = "smollm2-135m"  # model of the phase and strategy comparisons
chat_template = False  # wrap prompts in the model's chat template (instruct models); False: the paper's prompt
models = ["smollm2-135m", "gemma3-270m"]  # models compared with the default settings; empty skips that part
strategies = ["last_layer", "lora", "full"]  # fine-tuning strategies compared; empty skips that part
strategy_methods = ["TKFT", "DSA"]  # methods of the strategy rows (TKFT is Phase 1 only, DSA Phase 1 and 2)
fixed_epochs = 1  # Phase 1 epochs of every strategy row (lora and full are too slow for epoch selection on CPU)
fixed_lr = 1e-3  # Phase 1 learning rate of the strategy rows (one epoch at the default 5e-5 barely moves a model)
phase1 = {}  # dsalib.train.Phase1Config fields shared by every row (epochs is set by the strategy rows)
phase2 = {}  # dsalib.train.Phase2Config fields
min_eval_size = 10  # smallest truth subgroup that is evaluated
weighted_truth = False  # weight the truth by the survey's respondent weights
weighted_train = False  # weight the training distributions too (each subgroup keeps its respondent count as its size)
prefix_cache = "cache/prefix"  # on-disk cache of frozen-prefix activations; None keeps it in memory only
prefix_cache_bytes = 8589934592  # 8 GiB: in-memory frozen-prefix cache budget (least recently used go first); None: unbounded
prefix_batch_size = None  # prompts per frozen-prefix pass; None: the model's batch size
device_map = None  # accelerate placement over GPUs/CPU/disk: auto, balanced, balanced_low_0, sequential; None: one device
store_root = "cache/runs"  # shared resumable result stores; None keeps them in output_dir
output_dir = None  # None means runs/ablations/<dataset>/ (git-ignored); relative paths are under the repository root

# %% [markdown]
# Every parameter is checked before anything runs.

# %%
cfg = config.from_notebook("ablations", globals(), _names_before_parameters)
robustness.check_model_names([model] + list(models))
run = study.prepare(cfg, more_questions=[subset_questions])
survey, qs, out, store_root = run.survey, run.questions, run.out, run.store_root
sqs = list(subset_questions)
default_cfg = cfg.run_config(subset=False)
subset_cfg = cfg.run_config()
display(Markdown(f"**Data:** `{dataset}` from {survey.source_name}, {survey.n_respondents:,} respondents; "
                 f"n = {n}; truth modes {list(modes)}. Phase comparison: questions {', '.join(qs)}, seeds {list(seeds)}. "
                 f"Strategy and model comparisons: questions {', '.join(sqs)}, seeds {list(subset_seeds)}; "
                 f"strategies {list(strategies)} at {fixed_epochs} Phase 1 epoch(s), lr {fixed_lr}; models {list(models)}."))

# %%
runs, rules, res_default = robustness.run_ablations(cfg, store_root=store_root, survey=survey)
prov = results.provenance(survey, model=" ".join(dict.fromkeys([model] + list(models))),
                          option_rule={m: r for m, r in rules.items()}, seeds=seeds, n=n,
                          subset_questions=" ".join(sqs), subset_seeds=" ".join(map(str, subset_seeds)))
flat = results.scalar_columns(runs)
_ = results.write_table(flat, out / "results.csv", prov)

# %% [markdown]
# ## The finding first: did Phase 2 ever help?
#
# `DSA` is `TKFT` plus Phase 2, fitted on the same training sample, so each
# (setting, question, training sample, truth) gives one paired comparison. Counted
# over every setting of this study (phase, strategy and model parts):

# %%
h2h = robustness.head_to_head(runs)
results.write_table(h2h, out / "dsa_vs_tkft.csv", prov)
finding = robustness.head_to_head_sentence(h2h)
display(Markdown(finding))
glue(f"abl_{dataset}_dsa_vs_tkft", finding, display=False)
h2h_table = report.table(h2h.rename(columns={"metric": "error", "lower": "runs with DSA lower", "ties": "tied runs",
                                             "runs": "paired runs", "mean_diff": "mean of DSA − TKFT"})
                         .assign(error=lambda d: d.error.map(report.column_label)),
                         caption="DSA against TKFT on the same fits, over every setting")
display(h2h_table)
glue(f"abl_{dataset}_dsa_vs_tkft_table", h2h_table, display=False)

# %% [markdown]
# ## Phase 1 vs Phase 1 + 2
#
# Mean over questions, ± standard deviation over training samples (seeds), of the
# Wasserstein-1 error divided by K−1 (the paper reports WD) and of JSD;
# the paired difference `DSA − TKFT` is on the same runs.

# %%
phase = robustness.ablation_summary(runs[runs.part == "phase"], ["model", "strategy", "epochs"])
results.write_table(phase, out / "phase.csv", prov)
phase_wide = report.method_table(runs[runs.part == "phase"], ("wd_scaled_mean", "jsd_mean"))
per_phase = experiments.load_per_subgroup_modes(cfg.run_config(subset=False), store_root=store_root, survey=survey)
spreads = diagnostics.spread_table(per_phase, by=["truth_mode"]).reset_index()
results.write_table(spreads, out / "phase_spread.csv", prov)
for mode in modes:
    sp = spreads[spreads.truth_mode == mode].set_index("method")
    phase_wide[f"Spread, {report.TRUTH_LABELS.get(mode, mode)}"] = [sp.spread.get(m) for m in phase_wide.index]
phase_table = report.table(
    phase_wide, caption="Phase 1 (TKFT) and Phase 1 + 2 (DSA), with TS and the noise floor",
    missing="not defined for the noise floor (it predicts nothing)",
    notes=["Spread: mean JSD of each subgroup's prediction to their size-weighted mean (0: every subgroup gets the "
           "same prediction). The truth's spread over the same subgroups: "
           + ", ".join(f"{report.TRUTH_LABELS.get(m, m)} {report.format_number(float(g.truth_spread.mean()))}"
                       for m, g in spreads.groupby("truth_mode", sort=False)) + "."])
display(phase_table)
diff = pd.concat([robustness.paired_difference(res_default, "DSA", "TKFT", metric=mt).assign(metric=mt)
                  for mt in ("wd_scaled_mean", "jsd_mean")], ignore_index=True)
results.write_table(diff, out / "phase_difference.csv", prov)
display(report.table(diff[["truth_mode", "metric", "mean_diff", "sd_diff", "runs", "lower_share"]]
                     .assign(metric=lambda d: d.metric.map(report.column_label))
                     .rename(columns={"metric": "error", "mean_diff": "mean of DSA − TKFT",
                                      "sd_diff": "s.d. over runs", "lower_share": "share of runs with DSA lower"}),
                     shares=["share of runs with DSA lower"], caption="Paired difference DSA − TKFT"))
reports = robustness.phase2_reports(res_default)
results.write_table(reports, out / "phase2_reports.csv", prov)
display(report.table(reports.drop(columns=["note"]).rename(columns={
    "phase1_epochs": "Phase 1 epochs", "epochs_selected": "epochs chosen on validation", "phase2_pairs": "Phase 2 pairs",
    "attribute_changes": "attribute changes", "phase2_steps": "Phase 2 steps", "phase2_outcome": "Phase 2 outcome"}),
    caption="Phase 2 of every DSA fit", max_rows=10))
for _, row in phase.iterrows():
    glue(f"abl_{dataset}_{row.truth_mode}_phase_{row.method}_wd", float(row.wd_scaled_mean), display=False)
for _, row in diff.iterrows():
    glue(f"abl_{dataset}_{row.truth_mode}_phase_diff_{row.metric}", float(row.mean_diff), display=False)
glue(f"abl_{dataset}_phase2_kept_share", float((reports.phase2_outcome == "run").mean()), display=False)
glue(f"abl_{dataset}_phase2_pairs_mean", float(reports.phase2_pairs.mean()), display=False)
glue(f"abl_{dataset}_phase_table", phase_table, display=False)

# %% [markdown]
# ## Fine-tuning strategy (fixed number of Phase 1 epochs)
#
# On the subset of questions and training samples. Every strategy row is
# trained for `fixed_epochs` Phase 1 epochs at learning rate `fixed_lr` (not chosen on
# validation); the `selected` row is the default last-layer setting with epochs chosen
# on validation, for reference. Seconds are the mean wall time of one fit and
# prediction (contention on a shared machine inflates them).

# %%
def setting_table(rows, settings, caption):
    """Rows per truth mode: setting, method, WD/(K−1) and JSD (mean ± s.d. over seeds), seconds."""
    s = report.seed_summary(rows, ["wd_scaled_mean", "jsd_mean", "seconds"], by=["truth_mode", *settings, "method"])
    shown = s[["truth_mode", *settings, "method"]].copy()
    for m in ("wd_scaled_mean", "jsd_mean"):
        shown[report.column_label(m)] = [report.mean_sd(a, b) for a, b in zip(s[m], s[f"{m}_sd"])]
    shown["seconds per fit"] = s.seconds
    return [report.table(shown[shown.truth_mode == mode].drop(columns="truth_mode"),
                         caption=f"{caption} (truth: {report.TRUTH_LABELS.get(mode, mode)})") for mode in modes]


if strategies:
    strat_runs = runs[runs.part.isin(["strategy", "selected"])]
    strat = robustness.ablation_summary(strat_runs, ["strategy", "epochs"])
    secs = strat_runs.groupby(["truth_mode", "strategy", "epochs", "method"], sort=False).seconds.mean()
    strat = strat.merge(secs.rename("seconds").reset_index(), on=["truth_mode", "strategy", "epochs", "method"])
    results.write_table(strat, out / "strategy.csv", prov)
    strat_tables = setting_table(strat_runs.rename(columns={"epochs": "Phase 1 epochs"}),
                                 ["strategy", "Phase 1 epochs"], "Fine-tuning strategy")
    for t in strat_tables:
        display(t)
    for _, row in strat.iterrows():
        glue(f"abl_{dataset}_{row.truth_mode}_{row.strategy}_e{row.epochs}_{row.method}_wd", float(row.wd_scaled_mean),
             display=False)
    glue(f"abl_{dataset}_strategy_table", strat_tables[0], display=False)
    glue(f"abl_{dataset}_fixed_epochs", fixed_epochs, display=False)
    glue(f"abl_{dataset}_fixed_lr", float(fixed_lr), display=False)

# %% [markdown]
# ## Model
#
# Default settings (last layer, epochs chosen on validation), on the subset of
# questions and training samples.

# %%
if models:
    mod = robustness.ablation_summary(runs[runs.part == "model"], ["model"])
    results.write_table(mod, out / "models.csv", prov)
    model_tables = setting_table(runs[runs.part == "model"], ["model"], "Language model")
    for t in model_tables:
        display(t)
    for _, row in mod.iterrows():
        glue(f"abl_{dataset}_{row.truth_mode}_{row.model}_{row.method}_wd", float(row.wd_scaled_mean), display=False)
    glue(f"abl_{dataset}_model_table", model_tables[0], display=False)

# %% [markdown]
# ## Table 5 layout
#
# One row per setting as in the paper (model, phase, strategy, epochs), DSA and
# TKFT only, on the subset of questions and training samples, mean
# WD/(K−1) per truth mode; TS and the noise floor
# (which do not depend on the setting) as reference rows.

# %%
t5 = robustness.table5(runs)
results.write_table(t5.reset_index(), out / "table5.csv", prov)
t5_shown = t5.reset_index().rename(columns={"phase": "Phase", "epochs": "Phase 1 epochs",
                                            **{m: f"WD/(K−1), {report.TRUTH_LABELS.get(m, m)}" for m in modes}})
t5_table = report.table(t5_shown, caption="The paper's Table 5 layout (mean over questions and seeds)",
                        notes=["Phase 1 is TKFT, 1+2 is DSA; the reference rows are TS and the noise floor."])
display(t5_table)
glue(f"abl_{dataset}_table5", t5_table, display=False)
ft = runs[runs.method.isin(["TKFT", "DSA"]) & (runs.part != "phase")].drop_duplicates(
    ["truth_mode", "question", "seed", "method", "model", "strategy", "epochs"])
labelled = ft.assign(setting=ft.model + " / " + ft.strategy + " / e=" + ft.epochs.astype(str))
settings_shown = list(dict.fromkeys(labelled.setting))
fig, axes = report.figure(len(modes), 1, height=max(3.0, 0.55 * len(settings_shown) + 1.2) * len(modes), sharex=True)
for ax, mode in zip(axes[:, 0], modes):
    part = labelled[labelled.truth_mode == mode]
    y = np.arange(len(settings_shown))
    for k, m in enumerate(["TKFT", "DSA"]):  # grouped horizontal bars, ± s.d. over runs
        g = part[part.method == m].groupby("setting").wd_scaled_mean
        ax.barh(y + (k - 0.5) * 0.38, [g.mean().get(st, np.nan) for st in settings_shown], height=0.38,
                xerr=[g.std().get(st, np.nan) for st in settings_shown], color=report.method_color(m), label=m,
                capsize=2)
    for name, ls in (("TS", "--"), ("floor", ":")):
        v = runs[(runs.method == name) & (runs.truth_mode == mode) & (runs.part == "selected")].wd_scaled_mean.mean()
        ax.axvline(v, color="black", ls=ls, lw=1.2, label=name if name == "TS" else "noise floor")
    ax.set_yticks(y, settings_shown)
    ax.invert_yaxis()
    ax.set_title(f"truth: {report.TRUTH_LABELS.get(mode, mode)}")
axes[-1][0].set_xlabel("WD/(K−1), mean over subgroups")
report.legend_outside(fig, where="below", ncol=4)
report.check_fits_column(fig)
results.write_figure(fig, out / "ablations.png")
results.glue_figure(f"abl_{dataset}_fig", fig)

# %%
stores = [str(experiments.store_dir_for(default_cfg, m, store_root, survey)) for m in modes]  # the subset runs share them
stores += [str(experiments.store_dir_for(cfg.run_config(strategy=s, fixed=True), m, store_root, survey))
           for s in strategies for m in modes]
stores += [str(experiments.store_dir_for(cfg.run_config(model=x), m, store_root, survey)) for x in models if x != model
           for m in modes]
meta = results.write_metadata(out, study="ablations", params=cfg.to_params(), option_rule=rules, data=survey.describe(),
                              stores=stores)

# %% [markdown]
# ## The paper's numbers, for reference only
#
# DSA paper Table 5 (WD, Enhancement task, mean over its five datasets; Qwen3,
# n = 4,000, 20 questions; different data and model scale, not comparable one to one):
#
# | LLM | Phase | Strategy | Enhancement WD |
# |---|---|---|---|
# | 4B | 1 | Full | 0.118 |
# | 4B | 1+2 | Full | 0.107 |
# | 4B | 1+2 | LoRA | 0.111 |
# | 4B | 1+2 | LastLayer | 0.108 |
# | 32B | 1+2 | LastLayer | 0.105 |

# %%
final_dir = out.commit()  # the tables replace the output folder's previous ones as one set
display(Markdown(f"Tables written to `{out.shown}`."))
