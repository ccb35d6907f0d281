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
# # A cross-question prior: what the survey's other questions can add at small n
#
# A survey asks many questions of the same respondents. A language model
# fine-tuned on the *other* core questions (all their respondents) has learnt
# how the background shifts answers in this population, which is information
# beyond the target question's small training sample (`dsalib.cross_question`):
#
# - **XQ**: that model read on the target question's prompts (it never saw the target's answers);
# - **EB-XQ**: empirical-Bayes shrinkage of the target's training sample toward XQ;
# - **XQ-TKFT**: TKFT on the target's sample, warm-started from XQ's weights (epochs chosen on validation data).
#
# The fair non-LLM controls: **EB-MNL** (shrinkage toward a logit of the target's
# sample) and **Stacked-MNL** (a logit fitted on the same other questions with
# background effects shared across questions and question-specific intercepts).
# TS, MNL and TKFT are the usual references. Errors: JSD (natural log), mean over
# evaluated subgroups, then over target questions; ± s.d. over training samples.

# %%
import matplotlib

matplotlib.use("Agg")
import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from dsalib import config, cross_question, efficiency, report, results, study
from dsalib import methods as method_registry

report.style()
results.use_png_figures()  # figures display (and glue) as PNG under the headless Agg backend
_names_before_parameters = set(globals())

# %% tags=["parameters"]
dataset = "ess9"  # a dataset spec in params/datasets (or a path to a spec file)
questions = None  # target questions; None means every question of the dataset (the others train the prior)
background = None  # background attributes; None means the source's default set
data_dir = None  # folder with downloaded archive files (None: $DSA_DATA_DIR or data/)
source = "auto"  # which source of the spec: auto (the archive file if present), file or embedded
n = 100  # the training size the first table shows (one of sizes)
sizes = [50, 100, 250, 500]  # training sizes of the target question
seeds = [0, 1, 2]  # one training sample per seed
modes = ["full", "heldout"]  # ground truth: full (the paper) and/or heldout; each method is fitted once for all
methods = ["TS", "MNL", "EB-MNL", "Stacked-MNL", "TKFT", "XQ", "EB-XQ", "XQ-TKFT"]
model = "smollm2-135m"  # embedded name, local path or hub id
chat_template = False  # wrap prompts in the model's chat template (instruct models); False: the paper's prompt
template = "default"  # prompt template of Direct, AAE, TKFT and DSA (PE uses persona)
phase1 = {}  # dsalib.train.Phase1Config fields of TKFT, XQ and XQ-TKFT
phase2 = {}  # dsalib.train.Phase2Config fields (DSA, if listed)
strategy = "last_layer"  # fine-tuning strategy: last_layer, lora or full
min_eval_size = 10  # smallest truth subgroup that is evaluated
weighted_truth = False  # weight the truth by the survey's respondent weights
weighted_train = False  # weight the training distributions too (each subgroup keeps its respondent count as its size)
prefix_cache = "cache/prefix"  # on-disk cache of frozen-prefix activations; None keeps it in memory only
prefix_cache_bytes = 8589934592  # 8 GiB: in-memory frozen-prefix cache budget (least recently used go first); None: unbounded
prefix_batch_size = None  # prompts per frozen-prefix pass; None: the model's batch size
device_map = None  # accelerate placement over GPUs/CPU/disk: auto, balanced, balanced_low_0, sequential; None: one device
store_root = "cache/runs"  # shared resumable result stores reused by the other studies; None keeps them in output_dir
output_dir = None  # None means runs/cross_question/<dataset>/ (git-ignored); relative paths are under the repository root

# %%
cfg = config.from_notebook("cross_question", globals(), _names_before_parameters)
run = study.prepare(cfg)
survey, qs, out, store_root = run.survey, run.questions, run.out, run.store_root
display(Markdown(run.data_line(f"training sizes {cfg.sizes}", f"seeds {cfg.seeds}", f"truth modes {cfg.modes}")))

# %%
lm = None
if any(method_registry.needs_model(m) for m in cfg.methods):
    from dsalib.llm_methods import LanguageModel

    lm = LanguageModel.from_config(cfg)
res = efficiency.run_sizes(cfg, cfg.sizes, cfg.modes, store_root, lm=lm, survey=survey)
prov = results.provenance(survey, model=cfg.model if lm else None, option_rule=lm.describe() if lm else None,
                          seeds=cfg.seeds, n=cfg.sizes, template=cfg.template)
results.write_table(results.scalar_columns(res), out / "results.csv", prov)
sizes_table = cross_question.by_size(res)
results.write_table(sizes_table, out / "by_size.csv", prov)
verdicts = cross_question.verdicts(res)
_ = results.write_table(verdicts, out / "verdicts.csv", prov)  # assigned: as a cell's last line its path would print

# %% [markdown]
# ## Errors by training size

# %%
tag = survey.name
for mode in cfg.modes:
    t = sizes_table[sizes_table.truth_mode == mode]
    wide = t.assign(cell=[report.mean_sd(v, sd) for v, sd in zip(t.jsd_mean, t.jsd_mean_sd)]).pivot(
        index="method", columns="n", values="cell")
    wide = wide.loc[report.method_order(wide.index)]
    wide.columns = [f"n = {c}" for c in wide.columns]
    tbl = report.table(wide.rename_axis("method").reset_index(),
                       caption=f"Truth: {report.TRUTH_LABELS[mode]}. JSD by training size, mean over "
                               f"{len(qs)} question(s), ± s.d. over {len(cfg.seeds)} training sample(s)")
    display(tbl)
    glue(f"xq_{tag}_{mode}_table", tbl, display=False)
fig, axes = report.figure(1, len(cfg.modes), height=4.4, sharey=True)
for ax, mode in zip(axes[0], cfg.modes):
    t = sizes_table[sizes_table.truth_mode == mode]
    for m in report.method_order(t.method):  # a line joins one method's sizes (an ordered axis)
        d = t[t.method == m].sort_values("n")
        ax.errorbar(d.n, d.jsd_mean, yerr=d.jsd_mean_sd, marker="o", capsize=2, color=report.method_color(m),
                    label=m, ls="--" if m in cross_question.CONTROLS else "-")
    report.log_axis(ax, cfg.sizes)
    # TS is far above the rest: a log y axis keeps the close LLM and statistical lines apart.
    spread = sizes_table.jsd_mean_sd.fillna(0)
    report.log_axis(ax, report.nice_log_ticks(pd.concat([sizes_table.jsd_mean - spread, sizes_table.jsd_mean + spread,
                                                         sizes_table.jsd_mean])), which="y")
    ax.set_xlabel("training size n of the target question")
    ax.set_title(f"truth: {report.TRUTH_LABELS[mode]}")
axes[0][0].set_ylabel("JSD, mean ± s.d. over seeds (log scale)")
report.legend_outside(fig, where="below", ncol=4)
report.check_fits_column(fig)
results.write_figure(fig, out / "jsd_by_size.png")
results.glue_figure(f"xq_{tag}_fig", fig)

# %% [markdown]
# ## Does the cross-question prior beat the controls?
#
# For each truth and size: the best of XQ, EB-XQ and XQ-TKFT against EB-MNL and
# Stacked-MNL (lower JSD is better; means over questions and seeds).

# %%
tbl = report.table(verdicts, caption="The best cross-question LLM method against the controls")
display(tbl)
glue(f"xq_{tag}_verdicts", tbl, display=False)
sentences = []
for _, r in verdicts.iterrows():
    parts = [report.versus(r.best_xq, r.best_xq_jsd, c, r[f"{c}_jsd"]) for c in cross_question.CONTROLS
             if f"{c}_jsd" in r and pd.notna(r[f"{c}_jsd"])]
    sentences.append(f"{report.TRUTH_LABELS[r.truth_mode]} truth, n = {r.n}: " + "; ".join(parts))
small = verdicts[verdicts.n <= 250]  # the small training sizes: where a prior could help most
glue(f"xq_{tag}_cells_small", int(len(small)), display=False)
for c in cross_question.CONTROLS:
    if f"beats_{c}" in verdicts:
        glue(f"xq_{tag}_beats_{c.replace('-', '_')}_small", int(small[f"beats_{c}"].sum()), display=False)
glue(f"xq_{tag}_findings", report.plain("; ".join(sentences) + "."), display=False)
display(Markdown("\n".join(f"- {s}" for s in sentences)))

# %% [markdown]
# ## Metadata

# %%
meta = results.write_metadata(out, study="cross_question", params=cfg.to_params(),
                              option_rule=lm.describe() if lm else None, data=survey.describe())
final_dir = out.commit()  # the tables replace the output folder's previous ones as one set
print(", ".join(sorted(p.name for p in final_dir.iterdir())))
