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
# # Robustness: how often a method beats the training sample, and how much it depends on the prompt (paper sections 3.7 and 3.9, Tables 3 and 4)
#
# **Better than TS (Table 3).** When simulating a survey the truth is unknown,
# so a method is only safe to use if it rarely makes a subgroup's distribution
# *worse* than the training sample (TS) it was given. For every question,
# training sample (seed) and truth mode we count the evaluated subgroups where
# a method's error is strictly below TS's on the same subgroup, pooled over
# questions and seeds. The results come from the shared Enhancement stores
# (same settings as `params/enhancement/<dataset>.yaml`), so nothing is refitted
# when the enhancement study ran first. The `floor` row (a same-size bootstrap
# resample of the truth) is the reference: how often sampling noise alone beats TS.
# Optional extra training sizes (`sizes`) repeat the count at other `n`.
#
# **Prompt consistency (Table 4).** Direct, AAE, TKFT and DSA are fitted and
# evaluated once per prompt template (`default` and the four paraphrases
# `para1`..`para4` of `dsalib.prompts`; one shared store per template). For
# each subgroup, the JSD between a method's predictions under every pair of
# templates is averaged (lower = less sensitive to wording). PE is left out:
# it is by definition the `persona` template, so it has no paraphrases.
# All logic is in `dsalib.robustness` and `dsalib.experiments`.

# %%
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import Markdown, display
from myst_nb import glue

from dsalib import config, experiments, methods as method_registry, results, robustness, study

sns.set_theme(style="whitegrid")
results.use_png_figures()  # glued figures carry a PNG for the book
_names_before_parameters = set(globals())

# %% tags=["parameters"]
# Every setting of this study (dsalib.config.RobustnessConfig; papermill overrides them with
# -f params/robustness/<name>.yaml, -p name value for text and numbers, -y "name: [a, b]" for lists).
dataset = "ess9"  # a spec in params/datasets
questions = None  # core questions of the better-than-TS part; None means every question of the dataset
background = None  # background attributes; None means the default set of the source
data_dir = None  # folder with downloaded archive files (None means DSA_DATA_DIR or data/)
source = "auto"  # which source of the spec: auto (the archive file if present), file or embedded
n = 500  # training sample size (as the enhancement study)
seeds = [0, 1, 2, 3, 4]  # training samples of the better-than-TS part
modes = ["full", "heldout"]  # ground truth(s) of the better-than-TS part
methods = ["Direct", "PE", "AAE", "TKFT", "DSA"]  # compared with TS (TS and the floor are always included)
sizes = []  # further training sizes for the better-than-TS share (each fits the methods at that n); empty means only n
model = "smollm2-135m"  # embedded name, local path or hub id
chat_template = False  # wrap prompts in the model's chat template (instruct models); False: the paper's prompt
phase1 = {}  # dsalib.train.Phase1Config fields (as the enhancement study)
phase2 = {}  # dsalib.train.Phase2Config fields
strategy = "last_layer"  # fine-tuning strategy: last_layer, lora or full
min_eval_size = 10  # smallest truth subgroup that is evaluated
weighted_truth = False  # weight the truth by the survey's respondent weights
metric = "jsd"  # per-subgroup error that decides better or worse: jsd, wd or wd_scaled
templates = ["default", "para1", "para2", "para3", "para4"]  # prompt templates compared (PE has only persona)
prompt_methods = ["Direct", "AAE", "TKFT", "DSA"]  # methods of the prompt-consistency part; empty skips it
prompt_questions = None  # questions of the prompt part; None means the questions above
prompt_seeds = [0, 1]  # training samples of the prompt part
prompt_mode = "full"  # truth mode whose evaluated subgroups are compared across templates
prefix_cache = "cache/prefix"  # on-disk cache of frozen-prefix activations; None keeps it in memory only
store_root = "cache/runs"  # shared resumable result stores; None keeps them in output_dir
output_dir = None  # None means runs/robustness/<dataset>/ (git-ignored); relative paths are under the repository root

# %% [markdown]
# Every parameter is checked before anything runs.

# %%
cfg = config.from_notebook("robustness", globals(), _names_before_parameters)
run = study.prepare(cfg, more_questions=[prompt_questions] if prompt_methods else [])
survey, qs, out, store_root = run.survey, run.questions, run.out, run.store_root
pqs = list(prompt_questions or qs) if prompt_methods else []
prompt_cfgs = {t: cfg.run_config(methods=prompt_methods, template=t, seeds=prompt_seeds, questions=pqs)
               for t in templates} if prompt_methods else {}
display(Markdown(f"**Data:** `{dataset}` from {survey.source_name}, {survey.n_respondents:,} respondents; "
                 f"questions {', '.join(qs)}; n = {n} (and {sizes or 'no other sizes'}); seeds {list(seeds)}; "
                 f"truth modes {list(modes)}. Prompt part: {', '.join(pqs) or 'skipped'}, seeds {list(prompt_seeds)}, "
                 f"templates {list(templates)}, truth `{prompt_mode}`."))

# %%
lm = None
if any(method_registry.needs_model(m) for m in list(methods) + list(prompt_methods)):
    from dsalib.llm_methods import LanguageModel

    lm = LanguageModel.load(model, prefix_cache_dir=prefix_cache)
prov = results.provenance(survey, model=model if lm else None, option_rule=lm.describe() if lm else None,
                          seeds=seeds, n=n, metric=metric)
per_frames, res_frames = [], []
for size in dict.fromkeys([n] + list(sizes)):
    c = cfg.run_config(n=size)
    r = experiments.run_enhancement(c, lm=lm, store_root=store_root, survey=survey).assign(train_size=size)
    p = experiments.load_per_subgroup_modes(c, store_root=store_root, survey=survey).assign(train_size=size)
    res_frames.append(r)
    per_frames.append(p)
res = pd.concat(res_frames, ignore_index=True)
per = pd.concat(per_frames, ignore_index=True)

# %% [markdown]
# ## Share of subgroups where each method beats TS
#
# Pooled over questions and training samples: `share` = subgroups where the
# method's error is strictly below TS's / subgroups compared; `share_min` and
# `share_max` are the lowest and highest share of a single (question, sample).
# One block per truth mode; `floor` is the noise-floor reference row.

# %%
shares = robustness.better_than_reference(per, list(methods) + ["floor"], metric=metric,
                                          group=["train_size", "truth_mode", "question", "seed"])
results.write_table(shares, out / "better_than_ts_runs.csv", prov)
pooled = robustness.pool_shares(shares, by=["train_size", "truth_mode"])
results.write_table(pooled, out / "better_than_ts.csv", prov)
main = pooled[pooled.train_size == n].set_index(["truth_mode", "method"])
display(main[["share", "better", "subgroups", "share_min", "share_max", "runs"]].round(3))
for (mode, m), row in main.iterrows():
    glue(f"rob_{dataset}_{mode}_{m}_better", float(row.share), display=False)
for mode in modes:
    glue(f"rob_{dataset}_{mode}_better_table",
         main.loc[mode][["share", "better", "subgroups", "share_min", "share_max"]].round(3), display=False)
glue(f"rob_{dataset}_questions", ", ".join(qs), display=False)
glue(f"rob_{dataset}_n_seeds", len(seeds), display=False)

# %% [markdown]
# Per question (pooled over training samples), to see whether a method's
# advantage holds on every question or only on average.

# %%
by_q = robustness.pool_shares(shares[shares.train_size == n], by=["truth_mode", "question"])
table_q = by_q.pivot_table(index=["truth_mode", "method"], columns="question", values="share")
results.write_table(by_q, out / "better_than_ts_by_question.csv", prov)
display(table_q.round(3))
for mode in modes:
    glue(f"rob_{dataset}_{mode}_better_by_question", table_q.loc[mode].round(3), display=False)
order = [m for m in list(methods) + ["floor"] if m in set(by_q.method)]
grid = sns.catplot(data=by_q, x="method", y="share", hue="question", col="truth_mode", kind="bar", order=order,
                   height=3.4, aspect=1.3)
for ax in grid.axes.flat:
    ax.axhline(0.5, color="k", lw=0.8, ls=":")
    ax.set_ylim(0, 1)
grid.set_axis_labels("", f"share of subgroups with lower {metric} than TS")
grid.figure.suptitle(f"Better than the training sample on {dataset} (n = {n})", y=1.03)
results.write_figure(grid.figure, out / "better_than_ts.png")
glue(f"rob_{dataset}_better_fig", grid.figure, display=False)
results.show()

# %% [markdown]
# Across training sizes (only when `sizes` names further sizes).

# %%
if len(set(pooled.train_size)) > 1:
    by_size = pooled.pivot_table(index=["truth_mode", "method"], columns="train_size", values="share")
    display(by_size.round(3))
    glue(f"rob_{dataset}_better_by_size", by_size.round(3), display=False)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sns.lineplot(data=pooled[pooled.truth_mode == modes[0]], x="train_size", y="share", hue="method", marker="o", ax=ax)
    ax.set_ylim(0, 1)
    ax.set_title(f"share better than TS by training size ({modes[0]} truth)")
    results.write_figure(fig, out / "better_than_ts_by_size.png")
    glue(f"rob_{dataset}_better_by_size_fig", fig, display=False)
    results.show()
else:
    display(Markdown("Only one training size was run (`sizes` is empty)."))

# %% [markdown]
# ## Prompt consistency: pairwise JSD across paraphrased templates
#
# For each method, subgroup, question and training sample: the mean JSD
# between the method's predictions under every pair of templates, averaged
# over subgroups; `pairwise_jsd_x100` is on the paper's scale (JSD x 100).
# TS reads no prompt (its pairwise JSD is 0 by construction) and the
# `floor` column gives the scale of sampling noise in the truth: the mean JSD
# of a same-size resample of the truth against the truth.

# %%
if prompt_cfgs:
    tres, tper = [], []
    for t, c in prompt_cfgs.items():
        tres.append(experiments.run_enhancement(c, lm=lm, modes=[prompt_mode], store_root=store_root,
                                                survey=survey).assign(template=t))
        tper.append(experiments.load_per_subgroup_modes(c, [prompt_mode], store_root, survey).assign(template=t))
    tres = pd.concat(tres, ignore_index=True)
    tper = pd.concat(tper, ignore_index=True)
    pprov = results.provenance(survey, model=model, option_rule=lm.describe(), seeds=prompt_seeds, n=n,
                               truth_mode=prompt_mode, templates=" ".join(templates))
    pairwise = robustness.pairwise_template_jsd(tper, templates, ["TS"] + list(prompt_methods))
    results.write_table(pairwise, out / "prompt_pairwise_per_subgroup.csv", pprov)
    consistency = robustness.consistency_summary(pairwise)
    floor_jsd = float(tres[(tres.method == "floor") & (tres.template == templates[0])].jsd_mean.mean())
    consistency["floor_jsd"] = floor_jsd
    results.write_table(consistency, out / "prompt_consistency.csv", pprov)
    display(consistency.set_index("method").round(4))
    for _, row in consistency.iterrows():
        glue(f"rob_{dataset}_{row.method}_pairwise_x100", float(row.pairwise_jsd_x100), display=False)
    glue(f"rob_{dataset}_prompt_floor_jsd", floor_jsd, display=False)
    glue(f"rob_{dataset}_prompt_table", consistency.set_index("method").round(4), display=False)
    glue(f"rob_{dataset}_prompt_questions", ", ".join(pqs), display=False)

# %% [markdown]
# Each template's error (mean JSD against the truth over subgroups, questions
# and training samples): robustness is only useful if the method is also
# accurate under every wording. `floor` is the noise floor.

# %%
if prompt_cfgs:
    terr = robustness.template_errors(tres, "jsd_mean").loc[prompt_mode]
    terr = terr.loc[[m for m in ["TS"] + list(prompt_methods) + ["floor"] if m in terr.index], list(templates)]
    results.write_table(terr.reset_index(), out / "prompt_template_errors.csv", pprov)
    display(terr.round(4))
    glue(f"rob_{dataset}_template_errors", terr.round(4), display=False)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    sns.boxplot(data=pairwise, x="method", y="pairwise_jsd", ax=axes[0], color="#4c72b0", fliersize=2)
    axes[0].axhline(floor_jsd, color="k", ls=":", lw=0.8, label="noise floor (JSD)")
    axes[0].set_yscale("symlog", linthresh=1e-3)
    axes[0].set_ylabel("mean pairwise JSD across templates")
    axes[0].legend(fontsize=8)
    long = terr.reset_index().melt(id_vars="method", var_name="template", value_name="jsd_mean")
    sns.barplot(data=long, x="method", y="jsd_mean", hue="template", ax=axes[1])
    axes[1].set_ylabel("mean JSD to the truth")
    axes[1].legend(fontsize=7)
    plt.tight_layout()
    results.write_figure(fig, out / "prompt_consistency.png")
    glue(f"rob_{dataset}_prompt_fig", fig, display=False)
    results.show()

# %%
stores = [str(experiments.store_dir_for(cfg.run_config(n=s), m, store_root, survey)) for s in dict.fromkeys([n] + list(sizes))
          for m in modes]
stores += [str(experiments.store_dir_for(c, prompt_mode, store_root, survey)) for c in prompt_cfgs.values()]
meta = results.write_metadata(out, study="robustness", params=cfg.to_params(), option_rule=lm.describe() if lm else None,
                              data=survey.describe(), stores=stores)

# %% [markdown]
# ## The paper's numbers, for reference only
#
# DSA paper (Qwen3-4B, full survey files, n = 4,000, 20 questions per dataset;
# different data and model scale, not comparable one to one):
#
# - Table 3, share of backgrounds closer to the truth than the training set, ESS9:
#   Direct 6.91%, PE 8.15%, AAE 52.40%, TKFT 48.40%, DSA 96.40%
#   (over ESS11, ESS9, CGSS, WVS, CFPS: DSA 93.88% to 98.77%, AAE and TKFT 48% to 63%).
# - Table 4, mean pairwise JSD x 100 across five prompt wordings, ESS9:
#   Direct 1.07, PE 1.52, AAE 0.22, TKFT 0.16, DSA 0.11.

# %%
out.commit()  # the tables replace the output folder's previous ones as one set
display(Markdown(f"Tables written to `{out.shown}`."))
