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
import numpy as np
import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from dsalib import config, experiments, methods as method_registry, report, results, robustness, study

report.style()
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
weighted_train = False  # weight the training distributions too (each subgroup keeps its respondent count as its size)
metric = "jsd"  # per-subgroup error that decides better or worse: jsd, wd or wd_scaled
templates = ["default", "para1", "para2", "para3", "para4"]  # prompt templates compared (PE has only persona)
prompt_methods = ["Direct", "AAE", "TKFT", "DSA"]  # methods of the prompt-consistency part; empty skips it
prompt_questions = None  # questions of the prompt part; None means the questions above
prompt_seeds = [0, 1]  # training samples of the prompt part
prompt_mode = "full"  # truth mode whose evaluated subgroups are compared across templates
prefix_cache = "cache/prefix"  # on-disk cache of frozen-prefix activations; None keeps it in memory only
prefix_cache_bytes = 8589934592  # 8 GiB: in-memory frozen-prefix cache budget (least recently used go first); None: unbounded
prefix_batch_size = None  # prompts per frozen-prefix pass; None: the model's batch size
device_map = None  # accelerate placement over GPUs/CPU/disk: auto, balanced, balanced_low_0, sequential; None: one device
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

    lm = LanguageModel.from_config(cfg)
prov = results.provenance(survey, model=model if lm else None, option_rule=lm.describe() if lm else None,
                          seeds=seeds, n=n, metric=metric)
res, per = robustness.run_training_sizes(cfg, [n] + list(sizes), lm=lm, store_root=store_root, survey=survey)

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
main = pooled[pooled.train_size == n]
better_cols = {"share": "share", "better": "better", "subgroups": "subgroups",
               "share_min": "lowest share of one run", "share_max": "highest share of one run"}
for mode in modes:
    part = main[main.truth_mode == mode][["method"] + list(better_cols)].rename(columns=better_cols)
    tbl = report.table(part, shares=["share", "lowest share of one run", "highest share of one run"],
                       caption=f"Truth: {report.TRUTH_LABELS[mode]}. Subgroups closer to the truth than TS "
                               f"({report.column_label(metric)}), pooled over {len(qs)} question(s) x {len(seeds)} "
                               f"training sample(s)",
                       notes=["A run is one (question, training sample); floor: a same-size resample of the truth."])
    display(tbl)
    glue(f"rob_{dataset}_{mode}_better_table", tbl, display=False)
for _, row in main.iterrows():
    glue(f"rob_{dataset}_{row.truth_mode}_{row.method}_better", float(row.share), display=False)
glue(f"rob_{dataset}_questions", ", ".join(qs), display=False)
glue(f"rob_{dataset}_n_seeds", len(seeds), display=False)
glue(f"rob_{dataset}_finding", robustness.better_sentence(main, modes[0], methods), display=False)
display(Markdown(robustness.better_sentence(main, modes[0], methods)))

# %% [markdown]
# Per question (pooled over training samples), to see whether a method's
# advantage holds on every question or only on average.

# %%
by_q = robustness.pool_shares(shares[shares.train_size == n], by=["truth_mode", "question"])
results.write_table(by_q, out / "better_than_ts_by_question.csv", prov)
for mode in modes:
    wide = by_q[by_q.truth_mode == mode].pivot_table(index="method", columns="question", values="share", sort=False)
    tbl = report.table(wide.reset_index(), shares=list(wide.columns),
                       caption=f"Truth: {report.TRUTH_LABELS[mode]}. Share of subgroups closer to the truth than TS, "
                               f"per question")
    display(tbl)
    glue(f"rob_{dataset}_{mode}_better_by_question", tbl, display=False)
order = report.method_order(by_q.method)
fig, axes = report.figure(1, len(modes), height=3.8, sharey=True)
for ax, mode in zip(axes[0], modes):
    pooled_m = main[main.truth_mode == mode].set_index("method").share
    part = by_q[by_q.truth_mode == mode]
    x = np.arange(len(order))
    ax.bar(x, [pooled_m.get(m, np.nan) for m in order], color=[report.method_color(m) for m in order], width=0.7)
    for i, m in enumerate(order):  # one dot per question: the spread behind the pooled bar
        qv = part[part.method == m].share
        ax.scatter(np.full(len(qv), i), qv, color="black", s=12, zorder=3, label="one question" if i == 0 else None)
    ax.axhline(0.5, color="0.3", lw=1, ls=":", label="half of the subgroups")
    ax.set_ylim(0, 1)
    ax.set_xticks(x, order, rotation=30)
    ax.set_title(f"truth: {report.TRUTH_LABELS[mode]}")
axes[0][0].set_ylabel(f"share with lower {report.column_label(metric)} than TS")
report.legend_outside(fig, where="below")
report.check_fits_column(fig)
results.write_figure(fig, out / "better_than_ts.png")
results.glue_figure(f"rob_{dataset}_better_fig", fig)

# %% [markdown]
# Across training sizes (only when `sizes` names further sizes).

# %%
if len(set(pooled.train_size)) > 1:
    for mode in modes:
        wide = pooled[pooled.truth_mode == mode].pivot_table(index="method", columns="train_size", values="share",
                                                             sort=False)
        wide.columns = [f"n = {c:,}" for c in wide.columns]
        tbl = report.table(wide.reset_index(), shares=list(wide.columns),
                           caption=f"Truth: {report.TRUTH_LABELS[mode]}. Share closer to the truth than TS by "
                                   f"training size")
        display(tbl)
        if mode == modes[0]:
            glue(f"rob_{dataset}_better_by_size", tbl, display=False)
    fig, axes = report.figure(1, 1, width=7.5, height=4.0)
    ax = axes[0][0]
    part = pooled[pooled.truth_mode == modes[0]]
    for m in report.method_order(part.method):  # a line joins one method's sizes (an ordered axis)
        pm = part[part.method == m].sort_values("train_size")
        ax.plot(pm.train_size, pm.share, marker="o", color=report.method_color(m), label=m)
    ax.set_ylim(0, 1)
    report.log_axis(ax, sorted(set(part.train_size)))
    ax.set_xlabel("training size n (log scale)")
    ax.set_ylabel(f"share with lower {report.column_label(metric)} than TS")
    ax.set_title(f"truth: {report.TRUTH_LABELS[modes[0]]}")
    report.legend_outside(ax)
    report.check_fits_column(fig)
    results.write_figure(fig, out / "better_than_ts_by_size.png")
    results.glue_figure(f"rob_{dataset}_better_by_size_fig", fig)
else:
    display(Markdown("Only one training size was run (`sizes` is empty)."))

# %% [markdown]
# ## Prompt consistency: pairwise JSD across paraphrased templates
#
# For each method, subgroup, question and training sample: the mean JSD
# between the method's predictions under every pair of templates, averaged
# over subgroups; "× 100" is the paper's scale (JSD × 100).
# TS reads no prompt (its pairwise JSD is 0 by construction) and the
# noise floor gives the scale of sampling noise in the truth: the mean JSD
# of a same-size resample of the truth against the truth.

# %%
if prompt_cfgs:
    tres, tper = robustness.run_templates(prompt_cfgs, prompt_mode, lm=lm, store_root=store_root, survey=survey)
    pprov = results.provenance(survey, model=model, option_rule=lm.describe(), seeds=prompt_seeds, n=n,
                               truth_mode=prompt_mode, templates=" ".join(templates))
    pairwise = robustness.pairwise_template_jsd(tper, templates, ["TS"] + list(prompt_methods))
    results.write_table(pairwise, out / "prompt_pairwise_per_subgroup.csv", pprov)
    consistency = robustness.consistency_summary(pairwise)
    floor_jsd = float(tres[(tres.method == "floor") & (tres.template == templates[0])].jsd_mean.mean())
    consistency["floor_jsd"] = floor_jsd
    results.write_table(consistency, out / "prompt_consistency.csv", pprov)
    ctable = report.table(
        consistency[["method", "pairwise_jsd_x100", "pairwise_jsd_sd", "max_pair_jsd", "subgroups"]].rename(columns={
            "pairwise_jsd_x100": "pairwise JSD × 100", "pairwise_jsd_sd": "s.d. over subgroups (JSD)",
            "max_pair_jsd": "largest pair JSD"}),
        caption=f"Prompt consistency over templates {', '.join(templates)} (truth: {report.TRUTH_LABELS[prompt_mode]})",
        notes=[f"Noise floor (mean JSD of a same-size resample against the truth): {report.format_number(floor_jsd)}."])
    display(ctable)
    for _, row in consistency.iterrows():
        glue(f"rob_{dataset}_{row.method}_pairwise_x100", float(row.pairwise_jsd_x100), display=False)
    glue(f"rob_{dataset}_prompt_floor_jsd", floor_jsd, display=False)
    glue(f"rob_{dataset}_prompt_table", ctable, display=False)
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
    ttable = report.table(terr.rename_axis("method").reset_index(),
                          caption="Mean JSD to the truth under each prompt template")
    display(ttable)
    glue(f"rob_{dataset}_template_errors", ttable, display=False)
    fig, axes = report.figure(2, 1, height=7.5)
    ax = axes[0][0]
    shown = [m for m in report.method_order(pairwise.method) if m != "TS"]  # TS: 0 by construction
    data = [pairwise[pairwise.method == m].pairwise_jsd.to_numpy() for m in shown]
    boxes = ax.boxplot(data, patch_artist=True, widths=0.6, flierprops={"markersize": 3})
    for patch, m in zip(boxes["boxes"], shown):
        patch.set_facecolor(report.method_color(m))
    ax.axhline(floor_jsd, color="black", ls="--", lw=1.5, zorder=5, label="noise floor (JSD to the truth)")
    ax.set_yscale("log")  # pairwise JSD is positive for every method shown (TS, exactly 0, is left out)
    ax.set_xticks(range(1, len(shown) + 1), shown)
    ax.set_ylabel("pairwise JSD across templates")
    report.legend_outside(ax, where="below")
    report.option_bars(axes[1][0], {m: terr.loc[m].to_numpy() for m in terr.index}, list(templates),
                       xlabel="prompt template", ylabel="mean JSD to the truth")
    report.legend_outside(axes[1][0])
    report.check_fits_column(fig)
    results.write_figure(fig, out / "prompt_consistency.png")
    results.glue_figure(f"rob_{dataset}_prompt_fig", fig)

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
final_dir = out.commit()  # the tables replace the output folder's previous ones as one set
display(Markdown(f"Tables written to `{out.shown}`."))
