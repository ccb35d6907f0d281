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
# # Generation: train once, test on unseen questions and populations (paper section 3.4, Table 2; Fig. 5)
#
# One model is fine-tuned once on the *training set*: every (training question,
# subgroup) distribution of the *training population*. It is then tested,
# without further adaptation, on three test sets:
#
# - **NewQ**: unseen questions, training population;
# - **NewP**: training questions, an unseen population (the respondents whose
#   level of `heldout_attribute` is in `heldout_levels`; their prompts name a
#   level the model never saw in training);
# - **Both**: unseen questions and the unseen population.
#
# TKFT and DSA train one model on all training questions (Phase 1 loss over all
# training (question, subgroup) pairs; Phase 2 pairs are Hamming-1 subgroup
# pairs within each training question; the number of epochs is chosen on held-out
# training respondents). Direct and PE are zero-shot. Non-LLM references use the
# training set only: `QMean` (mean over training questions of the subgroup's
# distribution; NewQ and Both), `Marginal` (the training population's answer
# distribution), `TS-drop` and `MNL-drop` (NewP: the subgroup's training
# distribution, or a main-effects logit, with the held-out attribute dropped).
# `floor` is the noise floor of each test truth. The logic lives in
# `dsalib.generation`; results are stored per (split, question, seed, method) in
# a resumable store under `store_root`.

# %%
import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from dsalib import config, generation, report, results, study
from dsalib.errors import DataFileNotFound

report.style()
results.use_png_figures()  # glued figures carry a PNG for the book
_names_before_parameters = set(globals())

# %% tags=["parameters"]
# Every setting of this study (dsalib.config.GenerationConfig; papermill overrides them with
# -f params/generation/<name>.yaml, -p name value for text and numbers, -y "name: [a, b]" for lists and mappings).
dataset = "gss2018"  # a spec in params/datasets
train_questions = ["natheal", "natcity", "natcrime", "natdrug", "nateduc", "natrace", "natfare", "natsoc"]
test_questions = ["natenvir", "natarms", "natsci", "natroad"]  # unseen questions (NewQ and Both)
background = ["age", "degree", "party"]  # background attributes of the prompts; must include the held-out one
heldout_attribute = "party"  # the attribute whose held-out levels form the unseen population
heldout_levels = ["Independent"]  # levels of the unseen population (NewP and Both)
excluded_levels = []  # levels in neither population (the WVS C3 countries)
methods = ["Direct", "PE", "TKFT", "DSA", "QMean", "Marginal", "TS-drop", "MNL-drop"]
model = "smollm2-135m"  # embedded name, local path or hub id
chat_template = False  # wrap prompts in the model's chat template (instruct models); False: the paper's prompt
seeds = [0]  # one training run per seed (epoch-selection split and batch order)
template = "default"  # prompt template of Direct, TKFT and DSA (PE uses persona)
phase1 = {}  # dsalib.train.Phase1Config fields; epochs None chooses them on held-out training respondents
phase2 = {}  # dsalib.train.Phase2Config fields, e.g. {"min_pair_size": 10}
strategy = "last_layer"  # fine-tuning strategy: last_layer, lora or full
min_eval_size = 10  # smallest test subgroup that is evaluated
min_train_subgroups = 2  # fewest training subgroups a training question may have
data_dir = None  # folder with downloaded archive files (None means DSA_DATA_DIR or data/)
source = "auto"  # which source of the spec: auto (the archive file if present), file or embedded
prefix_cache = "cache/prefix"  # on-disk cache of frozen-prefix activations; None keeps it in memory only
prefix_cache_bytes = 8589934592  # 8 GiB: in-memory frozen-prefix cache budget (least recently used go first); None: unbounded
prefix_batch_size = None  # prompts per frozen-prefix pass; None: the model's batch size
device_map = None  # accelerate placement over GPUs/CPU/disk: auto, balanced, balanced_low_0, sequential; None: one device
store_root = "cache/runs"  # resumable result stores; None keeps them in output_dir
output_dir = None  # None means runs/generation/<dataset>/ (git-ignored); relative paths are under the repository root

# %% [markdown]
# Every parameter is checked before anything runs: an unknown method, a
# question the dataset does not have, a test question that is also a training
# question, a held-out attribute or level the dataset does not have, questions
# with different numbers of options, or a test set without a subgroup of
# `min_eval_size` respondents stops here with a message that names it. A dataset
# whose archive file is missing (e.g. WVS wave 7) stops here with the file to
# download and where to put it.

# %%
cfg = config.from_notebook("generation", globals(), _names_before_parameters)
try:
    run = study.prepare(cfg)
except DataFileNotFound as exc:
    display(Markdown(f"**The data file for `{dataset}` is missing.** {exc}"))
    raise
survey, out, store_root = run.survey, run.out, run.store_root
split = generation.make_split(survey, cfg)
sizes = split.describe()
n_prompts = split.prompt_count(templates=2 if "PE" in methods else 1)
display(Markdown(
    f"**Data:** `{dataset}` from {survey.source_name}, {survey.n_respondents:,} respondents; background "
    f"{', '.join(split.attributes)}; unseen population: `{heldout_attribute}` in {list(heldout_levels)} "
    f"({len(split.test_rows):,} respondents), training population {len(split.train_rows):,} respondents; "
    f"{len(split.train_questions)} training and {len(split.test_questions)} unseen questions; "
    f"about {n_prompts:,} distinct prompts."))
display(report.table(sizes, caption="Size of each part of the split"))

# %% [markdown]
# **Why this size.** The cost of a run is dominated by the frozen-prefix pass,
# about 0.35 s per new prompt on two quiet CPU cores (cached on disk afterwards,
# so a rerun skips it). The prompts are the training (question, subgroup) pairs
# plus, for every evaluated test subgroup, one default prompt (Direct, TKFT and
# DSA share it) and one persona prompt (PE). The embedded reference run uses
# three background attributes (age, degree, party: 36 subgroups per question, 24
# in the training population) with 8 training and 4 unseen GSS spending items:
# 192 training prompts and 670 prompts in all, about 4 minutes of prefix compute,
# while every evaluated subgroup still has at least `min_eval_size` respondents.
# Adding sex doubles the subgroups and the prompts.

# %%
lm = None
if any(m in generation.LLM_METHODS for m in methods):
    from dsalib.llm_methods import LanguageModel

    lm = LanguageModel.from_config(cfg)
res, per = generation.run_generation(cfg, lm=lm, store_root=store_root, split=split)
prov = results.provenance(survey, model=model if lm else None, option_rule=lm.describe(split.n_options) if lm else None,
                          seeds=seeds, truth_mode="test population (no overlap with training)",
                          heldout=f"{heldout_attribute}: {', '.join(heldout_levels)}", template=template)
results.write_table(sizes, out / "split_sizes.csv", prov)
results.write_table(res, out / "results.csv", prov)
results.write_table(per, out / "per_subgroup.csv", prov)
meta = results.write_metadata(out, study="generation", params=cfg.to_params(),
                              option_rule=lm.describe(split.n_options) if lm else None, data=survey.describe(),
                              store=str(generation.store_dir_for(cfg, store_root, survey)))

# %% [markdown]
# ## The table (paper Table 2 layout)
#
# WD is Wasserstein-1 on option positions divided by K-1 (`wd_scaled_mean`),
# JSD the divergence (natural log); both are unweighted means over evaluated
# subgroups, then over test questions (and seeds). `Avg` is the mean over the
# three splits (empty for a reference defined on only some splits). Truth: the
# test population's answers to the test questions, disjoint from the training
# set (NewQ shares respondents with the training set but not questions).

# %%
table = generation.summary_table(res)
results.write_table(table.set_axis([f"{m}|{s}" for m, s in table.columns], axis=1).reset_index(),
                    out / "summary.csv", prov)
key = f"gen_{dataset}"
for m, row in table.iterrows():
    for (metric, s), v in row.items():
        if pd.notna(v):
            glue(f"{key}_{s}_{m.replace('-', '_')}_{'wd' if metric.startswith('wd') else 'jsd'}", float(v), display=False)
shown = {}
for metric in ("wd_scaled_mean", "jsd_mean"):  # one table per measure: splits as columns, mean ± s.d. over seeds
    t = report.method_table(res, (metric,), by="split")
    t = t[[f"{report.column_label(metric)}, {s}" for s in generation.SPLITS if f"{report.column_label(metric)}, {s}" in t]]
    t.columns = [c.split(", ")[1] for c in t.columns]
    t["mean of the splits"] = [report.format_number(v) if pd.notna(v) else np.nan
                               for v in table[(metric, "Avg")].reindex(t.index)]
    shown[metric] = report.table(
        t, caption=f"{report.column_label(metric)} by test split (mean over test questions, ± s.d. over seeds)",
        missing="the reference is not defined on this split (and so has no mean over the splits)",
        notes=["QMean needs unseen questions (NewQ, Both); TS-drop and MNL-drop need the training questions (NewP)."])
    display(shown[metric])
glue(f"{key}_table", shown["wd_scaled_mean"], display=False)
glue(f"{key}_table_jsd", shown["jsd_mean"], display=False)
glue(f"{key}_heldout", f"{heldout_attribute} = {', '.join(heldout_levels)}", display=False)
glue(f"{key}_train_questions", ", ".join(split.train_questions), display=False)
glue(f"{key}_test_questions", ", ".join(split.test_questions), display=False)
glue(f"{key}_n_respondents", int(survey.n_respondents), display=False)
glue(f"{key}_n_prompts", int(n_prompts), display=False)
fits = res[res.method.isin(["TKFT", "DSA"])].drop_duplicates(["method", "seed"])
for m, g in fits.groupby("method"):
    glue(f"{key}_{m}_epochs", int(g.phase1_epochs.iloc[0]), display=False)
if "DSA" in set(fits.method):
    p2 = report.phase2_sentence(fits[fits.method == "DSA"].phase2_outcome)
    glue(f"{key}_DSA_phase2_kept", p2, display=False)
    display(Markdown(p2))
display(report.table(fits[["method", "seed"] + [c for c in ["phase1_epochs", "phase2_outcome", "phase2_pairs",
                                                                "train_prompts", "fit_seconds"] if c in fits]]
                     .rename(columns={"phase1_epochs": "Phase 1 epochs", "phase2_outcome": "Phase 2",
                                      "phase2_pairs": "Phase 2 pairs", "train_prompts": "training prompts"}),
                     caption="The fine-tuned fits", missing="not applicable (TKFT has no Phase 2)"))
jsd = table["jsd_mean"]
findings_text = []
for s, llm, ref in (("NewP", "DSA", "MNL-drop"), ("NewQ", "DSA", "QMean"), ("Both", "DSA", "QMean"),
                    ("NewP", "DSA", "TKFT"), ("NewQ", "DSA", "TKFT")):
    if llm in jsd.index and ref in jsd.index and pd.notna(jsd.loc[llm, s]) and pd.notna(jsd.loc[ref, s]):
        findings_text.append(f"{s}: " + report.versus(llm, jsd.loc[llm, s], ref, jsd.loc[ref, s], "JSD"))
if findings_text:
    glue(f"{key}_findings", "; ".join(findings_text) + ".", display=False)
    display(Markdown("\n".join(f"- {t}" for t in findings_text)))

# %%
per_q = res.pivot_table(index=["split", "question"], columns="method", values="jsd_mean", sort=False)
per_q = per_q[report.method_order(per_q.columns)].reset_index()
display(report.table(per_q, caption="JSD per test question (mean over seeds)", missing="not defined on this split",
                     max_rows=12))
order = report.method_order(table.index)
fig, axes = report.figure(1, len(generation.SPLITS), height=4.2, sharey=True)
summary = res.groupby(["split", "method"]).jsd_mean.mean()
y = np.arange(len(order))  # one row per method on every panel; a method not defined on a split has no bar
for ax, s in zip(axes[0], generation.SPLITS):
    ax.barh(y, [summary.get((s, m), np.nan) for m in order], color=[report.method_color(m) for m in order])
    ax.set_title(s)
    ax.set_xlabel("mean JSD")
axes[0][0].set_yticks(y, order)
axes[0][0].invert_yaxis()
results.write_figure(fig, out / "jsd_by_split.png")
report.check_fits_column(fig)
results.glue_figure(f"{key}_fig", fig)

# %% [markdown]
# ## Accuracy on the unseen population, per held-out level (the analogue of Fig. 5)
#
# The paper's Fig. 5 shows each method's error per unseen country. Here the
# per-subgroup JSD of the NewP and Both test sets is averaged within each
# held-out level of `heldout_attribute` (one bar group per level).

# %%
unseen = per[per.split.isin(["NewP", "Both"])]
by_pop = unseen.groupby(["split", "population", "method"], as_index=False)["jsd"].mean()
results.write_table(by_pop, out / "unseen_population.csv", prov)
fig, axes = report.figure(1, 2, height=4.0, sharey=True)
for ax, s in zip(axes[0], ["NewP", "Both"]):
    part = by_pop[by_pop.split == s]
    levels = list(dict.fromkeys(part.population))
    report.option_bars(ax, {m: part[part.method == m].set_index("population").jsd.reindex(levels).to_numpy()
                            for m in report.method_order(part.method)}, levels,
                       xlabel=heldout_attribute, ylabel="mean JSD over subgroups")
    ax.set_title(s)
report.legend_outside(fig, where="below", ncol=4)
report.check_fits_column(fig)
results.write_figure(fig, out / "unseen_population.png")
results.glue_figure(f"{key}_population_fig", fig)

# %% [markdown]
# ## The paper's numbers, for reference only
#
# DSA paper Table 2 (WVS wave 7 split of Cao et al.: training C1-Q1, NewQ C1-Q3,
# NewP C2-Q1, Both C2-Q3; about 90,000 respondents; models of 4B-32B parameters),
# WD / JSD averaged over the three splits:
#
# | LLM | Direct | PE | TKFT | DSA |
# |---|---|---|---|---|
# | Qwen3-4B | 0.106 / 0.378 | 0.105 / 0.376 | 0.075 / 0.220 | 0.065 / 0.208 |
# | Qwen3-32B | 0.098 / 0.313 | 0.099 / 0.322 | 0.067 / 0.188 | 0.061 / 0.177 |
# | Llama3-8B | 0.103 / 0.241 | 0.103 / 0.237 | 0.080 / 0.200 | 0.069 / 0.186 |
#
# The paper reports no non-LLM reference and no noise floor for this task. The
# runs above use a 135M model on other data (by default the embedded GSS 2018
# extract), so the numbers are not comparable one to one;
# `params/generation/wvs.yaml` runs the WVS split on the user's WVS file.

# %%
final_dir = out.commit()  # the tables replace the output folder's previous ones as one set
display(Markdown(f"Tables written to `{out.shown}`."))
