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
# # DSA in the paper's regime: a large survey, many respondents per subgroup
#
# Our reference runs train on n = 500 with about 5 respondents per training
# subgroup; the paper trains on n = 4,000 with about 100. Here the Enhancement
# protocol runs on a large embedded survey with a background coarse enough that
# training subgroups average at least `min_mean_train_size` respondents, and
# compares on the same training samples (`dsalib.regime`):
#
# - **TKFT** and **DSA** with the project's epoch selection; DSA keeps Phase 2
#   only if it does not raise the validation cross-entropy (the guard);
# - **DSA (no guard)**: Phase 2 always kept;
# - **TKFT (paper)** and **DSA (paper)**: the paper's setting, Phase 1 one epoch
#   at lr 5e-5, Phase 2 on pairs of ≥ 10 respondents, no guard;
# - **DSA-ratio**: Phase 2 with Theorem 1's ratio operator and targets fixed at
#   Phase 1's predictions (what the known-truth check suggests), no guard;
# - TS and MNL as the statistical references.
#
# For every DSA run the tables give the training pairs, attribute changes,
# Phase 2 steps and outcome, and the change in JSD that Phase 2 made (the DSA
# run minus the TKFT run with the same Phase 1). Nothing here is tuned on the
# evaluation truth.

# %%
import matplotlib

matplotlib.use("Agg")
import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from dsalib import config, regime, report, results, study

report.style()
results.use_png_figures()  # figures display (and glue) as PNG under the headless Agg backend
_names_before_parameters = set(globals())

# %% tags=["parameters"]
dataset = "gss_abortion"  # a large dataset spec: gss_abortion, wvs_immig or wvs_justifbribe
questions = ["abany"]  # core questions; None means every question of the dataset
background = ["sex", "party", "decade"]  # coarse enough for min_mean_train_size respondents per training subgroup
data_dir = None  # folder with downloaded archive files (None: $DSA_DATA_DIR or data/)
source = "auto"  # which source of the spec: auto (the archive file if present), file or embedded
n = 4000  # training sample size (the paper's 4,000)
seeds = [0, 1, 2, 3, 4]  # one training sample per seed
modes = ["full", "heldout"]  # ground truth: full (the paper) and/or heldout; each method is fitted once for all
model = "smollm2-135m"  # embedded name, local path or hub id
chat_template = False  # wrap prompts in the model's chat template (instruct models); False: the paper's prompt
phase1 = {}  # Phase1Config fields of TKFT and DSA (default: epochs chosen on validation data)
phase2 = {}  # Phase2Config fields of DSA (default: the guard on); DSA (no guard) and DSA-ratio change the guard/operator
paper_phase1 = {"epochs": 1, "lr": 5e-5}  # Phase 1 of the paper's setting
paper_phase2 = {"min_pair_size": 10, "guard": False}  # Phase 2 of the paper's setting (unlisted fields: defaults)
baselines = ["TS", "MNL"]  # statistical references
min_mean_train_size = 50.0  # fewest training respondents per subgroup on average (checked before anything runs)
min_eval_size = 10  # smallest truth subgroup that is evaluated
weighted_truth = False  # weight the truth by the survey's respondent weights
weighted_train = False  # weight the training distributions too (each subgroup keeps its respondent count as its size)
prefix_cache = "cache/prefix"  # on-disk cache of frozen-prefix activations; None keeps it in memory only
prefix_cache_bytes = 8589934592  # 8 GiB: in-memory frozen-prefix cache budget (least recently used go first); None: unbounded
prefix_batch_size = None  # prompts per frozen-prefix pass; None: the model's batch size
device_map = None  # accelerate placement over GPUs/CPU/disk: auto, balanced, balanced_low_0, sequential; None: one device
store_root = "cache/runs"  # shared resumable result stores; None keeps them in output_dir
output_dir = None  # None means runs/dsa_regime/<dataset>/ (git-ignored); relative paths are under the repository root

# %%
cfg = config.from_notebook("dsa_regime", globals(), _names_before_parameters)
run = study.prepare(cfg)
survey, qs, out, store_root = run.survey, run.questions, run.out, run.store_root
sizes = regime.check_regime(cfg, survey)  # an error here when the background is too fine for the regime
display(Markdown(run.data_line(f"training size n = {cfg.n}", f"seeds {cfg.seeds}", f"truth modes {cfg.modes}")))
display(report.table(sizes, caption=f"Training subgroups at n = {cfg.n} (first seed's sample)"))

# %%
from dsalib.llm_methods import LanguageModel

lm = LanguageModel.from_config(cfg)
res = regime.run_regime(cfg, lm=lm, store_root=store_root, survey=survey)
prov = results.provenance(survey, model=cfg.model, option_rule=lm.describe(), seeds=cfg.seeds, n=cfg.n)
results.write_table(results.scalar_columns(res), out / "results.csv", prov)
runs = regime.phase2_runs(res)
results.write_table(runs, out / "phase2_runs.csv", prov)
summary = regime.summary(res)
results.write_table(summary, out / "summary.csv", prov)
p2 = regime.phase2_summary(runs)
results.write_table(p2, out / "phase2_summary.csv", prov)
_ = results.write_table(sizes, out / "training_subgroups.csv", prov)  # assigned: as a cell's last line its path would print

# %% [markdown]
# ## Errors: mean over questions and training samples
#
# JSD (natural log), unweighted mean over evaluated subgroups, then over
# questions; ± the standard deviation over training samples (seeds).

# %%
tag = cfg.dataset
for mode in cfg.modes:
    s = summary[summary.truth_mode == mode].drop(columns="truth_mode").set_index("method")
    t = pd.DataFrame({"JSD": [report.mean_sd(v, sd) for v, sd in zip(s.jsd_mean, s.jsd_sd)]}, index=s.index)
    tbl = report.table(t.reset_index(), caption=f"Truth: {report.TRUTH_LABELS[mode]}. JSD, mean over "
                       f"{len(qs)} question(s), ± s.d. over {len(cfg.seeds)} training sample(s)")
    display(tbl)
    glue(f"regime_{tag}_{mode}_table", tbl, display=False)
fig, axes = report.figure(1, len(cfg.modes), height=4.4, sharey=True)
for ax, mode in zip(axes[0], cfg.modes):
    s = report.seed_summary(res[(res.truth_mode == mode) & (res.method != "floor")], "jsd_mean", by=["method"])
    report.method_points(ax, s, "jsd_mean", "jsd_mean_sd", xlabel="JSD, mean ± s.d. over seeds")
    ax.set_xscale("log")
    ax.set_title(f"truth: {report.TRUTH_LABELS[mode]}")
report.check_fits_column(fig)
results.write_figure(fig, out / "jsd_by_method.png")
results.glue_figure(f"regime_{tag}_fig", fig)

# %% [markdown]
# ## What Phase 2 did
#
# Per truth mode and DSA variant: the mean change in JSD that Phase 2 made
# (negative: it lowered the error), the share of runs where it lowered it, the
# share where it ran (not skipped for lack of pairs, not rejected by the guard),
# and the mean training pairs, attribute changes and Phase 2 steps.

# %%
# One row per variant: what Phase 2 did does not depend on the truth, only its change in JSD does.
p2_full = p2[p2.truth_mode == cfg.modes[0]].set_index("method")
compact = pd.DataFrame({"Phase 2 ran": p2_full.phase2_run_share})  # runs per variant: the caption
for mode in cfg.modes:
    pm = p2[p2.truth_mode == mode].set_index("method").loc[p2_full.index]
    compact[f"JSD change ({report.TRUTH_LABELS[mode]})"] = [
        report.mean_sd(v, sd) for v, sd in zip(pm.phase2_change_jsd, pm.change_sd)]
    compact[f"lowered ({report.TRUTH_LABELS[mode]})"] = pm.lowered_share
compact["pairs"] = p2_full.pairs
compact["steps"] = p2_full.phase2_steps
tbl = report.table(compact.rename_axis("method").reset_index(),
                   caption=f"Phase 2 per variant ({int(p2_full.runs.iloc[0])} runs each; mean over questions and "
                           f"seeds; change ± s.d. over seeds)",
                   shares=["Phase 2 ran"] + [c for c in compact.columns if c.startswith("lowered")])
display(tbl)
glue(f"regime_{tag}_phase2_table", tbl, display=False)
# The numbers the book's reading states: training respondents per subgroup, pairs, steps, and guard outcomes.
glue(f"regime_{tag}_respondents_per_subgroup", float(sizes["mean training respondents"].mean()), display=False)
glue(f"regime_{tag}_pairs", float(p2_full.loc["DSA", "pairs"]), display=False)
glue(f"regime_{tag}_no_guard_steps", float(p2_full.loc["DSA (no guard)", "phase2_steps"]), display=False)
dsa_runs = runs[(runs.method == "DSA") & (runs.truth_mode == cfg.modes[0])]
glue(f"regime_{tag}_guard_rejected", report.plain(
    f"{int((dsa_runs.phase2_outcome == 'rejected').sum())} of {len(dsa_runs)}"), display=False)
display(report.table(runs[["question", "seed", "truth_mode", "method", "jsd_mean", "tkft_jsd", "phase2_change_jsd",
                            "phase2_outcome", "phase1_epochs"]],
                     caption="Every DSA run (pairs, attribute changes and steps: phase2_runs.csv)", max_rows=20,
                     missing="not run (the guard rejected Phase 2 or no pair reached the size threshold)"))

# %% [markdown]
# ## The findings in words

# %%
found = regime.findings(res, runs, cfg.modes)
sentences = []
for mode in cfg.modes:
    label = report.TRUTH_LABELS[mode]
    sentences.append(f"{label} truth: the lowest error is `{found[f'{mode}_best']}`")
    sentences.append(f"{label} truth: " + report.versus("DSA", found[f"{mode}_DSA"], "TKFT", found[f"{mode}_TKFT"]))
    sentences.append(f"{label} truth: " + report.versus("TKFT", found[f"{mode}_TKFT"], "TS", found[f"{mode}_TS"]))
    for m in ["DSA", "DSA (no guard)", "DSA-ratio", "DSA (paper)"]:
        if f"{mode}_{m}_change" in found:
            sentences.append(f"{label} truth: Phase 2 of `{m}` changed the JSD by "
                             f"{report.format_number(found[f'{mode}_{m}_change'])} on average and lowered it in "
                             f"{report.format_share(found[f'{mode}_{m}_lowered'])} of the runs")
glue(f"regime_{tag}_findings", report.plain("; ".join(sentences) + "."), display=False)
for name, value in found.items():
    glue(f"regime_{tag}_{name}".replace(" ", "_").replace("(", "").replace(")", ""), value, display=False)
display(Markdown("\n".join(f"- {s}" for s in sentences)))

# %% [markdown]
# ## Metadata

# %%
meta = results.write_metadata(out, study="dsa_regime", params=cfg.to_params(), option_rule=lm.describe(),
                              data=survey.describe(), training_subgroups=sizes.to_dict(orient="records"))
final_dir = out.commit()  # the tables replace the output folder's previous ones as one set
print(", ".join(sorted(p.name for p in final_dir.iterdir())))
