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
# # Theorem 1: shift transfer under factorised effects
#
# The DSA paper (appendix F, Theorem 1) shows that if the answer distribution
# factorises over the background attributes, $P(C \mid b) \propto \prod_k \phi_k(C, b_k)$
# (a main-effects multinomial logit), then the effect of changing one attribute
# $x_0 \to x_1$ transfers exactly between settings $d_1, d_2$ of the others:
#
# $$P(C \mid x_1, d_2) = \mathrm{Normalize}\Big(P(C \mid x_0, d_2)\,\frac{P(C \mid x_1, d_1)}{P(C \mid x_0, d_1)}\Big).$$
#
# This notebook checks the statement numerically and asks three questions the
# theorem leaves open:
#
# 1. **Exact recovery.** Does the ratio transfer recover every target on random
#    factorised tables (to floating-point precision)?
# 2. **The method DSA uses.** DSA does not transfer ratios; it transfers a
#    *quantile-mapping* shift (`dsalib.quantile`). How far is that from the
#    truth on the same tables, where the theorem's transfer is exact?
# 3. **Robustness.** How fast does the error grow when the tables are not
#    factorised (an interaction between two attributes), and with finite samples,
#    when does a rare subgroup's own few answers beat transfer from large
#    subgroups?
#
# All logic lives in `dsalib.theorem` (tested in `tests/test_theorem.py`); this
# notebook only runs it, writes tidy tables to `output_dir` and plots them.
# Errors: JSD (natural log, the divergence), scaled Wasserstein-1 (`wd / (K-1)`),
# and the largest absolute probability error.

# %%
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import display
from matplotlib_inline.backend_inline import set_matplotlib_formats
from myst_nb import glue

from dsalib import config, results, study, theorem

set_matplotlib_formats("png")  # figures display as PNG under the (headless) Agg backend
sns.set_theme(style="whitegrid", context="notebook")
pd.set_option("display.precision", 4)
pd.set_option("display.width", 160)
_names_before_parameters = set(globals())

# %% tags=["parameters"]
# Every setting of this study (dsalib.config.TheoremConfig; papermill overrides them with
# -f params/theorem/<name>.yaml, -p name value for text and numbers, -y "name: [a, b]" for lists).
seed = 0  # base seed; table t of a study uses the seed pair (seed, t)
levels = [2, 3, 4]  # number of levels of each background attribute
n_options = 5  # answer options of the core question
effect_scale = 1.0  # standard deviation of the random log-potentials
effects = ["free", "ordinal"]  # kinds of main effects to study (see dsalib.theorem)
n_quantile_levels = 100  # quantile levels of the quantile-mapping operator
interaction_grid = [0.0, 0.1, 0.25, 0.5, 1.0, 2.0]  # strengths of the non-factorised term
n_tables = 20  # random tables per effects kind and interaction strength
finite_interactions = [0.0, 0.5]  # interaction strengths of the finite-sample study
reference_sizes = [100, 1000]  # respondents in every non-target subgroup
rare_sizes = [5, 10, 20, 50, 100, 200, 500, 1000]  # respondents in the rare target subgroup
repetitions = 200  # random (table, target, sample) draws per finite-sample setting
smoothing = 0.5  # additive pseudo-count for empirical distributions fed to transfers
output_dir = None  # None means runs/theorem/default/ (git-ignored); relative paths are under the repository root

# %% [markdown]
# ## Parameters
#
# Every parameter is checked before anything runs: an unknown name (a typo in a
# parameter file) or a malformed value (say, a negative sample size) stops the
# run with a message that names it.

# %%
cfg = config.from_notebook("theorem", globals(), _names_before_parameters)
params = cfg.to_params()  # checked and normalised (numbers as floats, interaction_grid sorted)
out_dir = study.OutputFolder(study.output_dir_for(cfg))  # tables go to a temporary folder, swapped in at the end
# synthetic tables, no survey or language model: the tables record the seed and the code version
prov = results.provenance(seeds=[params["seed"]], data_source="synthetic factorised tables (dsalib.theorem)")
print(f"output_dir: {out_dir.shown}")
pd.Series({k: v for k, v in params.items()}, name="value").to_frame()

# %% [markdown]
# ## 1. Exact recovery on factorised tables
#
# For every kind of effects, draw `n_tables` random factorised tables and apply
# the ratio transfer to every case $(k, x_0, x_1, d_1, d_2)$ with $x_0 \ne x_1$,
# $d_1 \ne d_2$; compare with the true $P(C \mid x_1, d_2)$.

# %%
recovery = pd.concat(
    [
        theorem.exact_recovery(
            theorem.random_factorised(params["levels"], params["n_options"], (params["seed"], t), 0.0,
                                      params["effect_scale"], eff)
        ).assign(effects=eff, table=t)
        for eff in params["effects"]
        for t in range(params["n_tables"])
    ],
    ignore_index=True,
)
recovery_summary = (
    recovery.groupby("effects", sort=False)
    .agg(tables=("table", "nunique"), cases=("jsd", "size"), max_abs_error=("max_abs_error", "max"),
         max_jsd=("jsd", "max"))
    .reset_index()
)
results.write_table(recovery_summary, out_dir / "exact_recovery.csv", prov)
key_numbers = {}  # name -> value; glued for the book and written to key_numbers.csv at the end
key_numbers["theorem_max_error"] = float(recovery["max_abs_error"].max())
key_numbers["theorem_n_cases"] = int(len(recovery))
print(f"largest absolute error over {len(recovery):,} cases: {key_numbers['theorem_max_error']:.2e}")
recovery_summary

# %% [markdown]
# ## 2. Ratio transfer vs DSA's quantile-mapping transfer (population level)
#
# Same factorised tables, four estimators of the target (see `dsalib.theorem`):
# the theorem's ratio from one reference pair and pooled over every other
# setting $d \ne d_2$ (geometric mean), and DSA's quantile-mapping operator from
# one pair and pooled (mean shift). The theorem guarantees the first two, not
# the last two. `no_shift` (the neighbour $P(C \mid x_0, d_2)$ taken as it is)
# says how far the target is from where the transfer starts: a transfer that
# does not beat it has not captured the effect of $x_0 \to x_1$.

# %%
comparison = pd.concat(
    [
        theorem.transfer_comparison(
            theorem.random_factorised(params["levels"], params["n_options"], (params["seed"], t), 0.0,
                                      params["effect_scale"], eff),
            n_levels=params["n_quantile_levels"],
        ).assign(effects=eff, table=t)
        for eff in params["effects"]
        for t in range(params["n_tables"])
    ],
    ignore_index=True,
)
comparison_summary = theorem.summarize_transfer(comparison, by=["effects", "method"])
results.write_table(comparison_summary, out_dir / "transfer_comparison.csv", prov)
for row in comparison_summary.itertuples():
    key_numbers[f"theorem_{row.method}_jsd_{row.effects}"] = float(row.jsd_mean)
    key_numbers[f"theorem_{row.method}_wd_{row.effects}"] = float(row.wd_scaled_mean)
comparison_summary

# %%
fig, ax = plt.subplots(figsize=(8, 4))
plot_df = comparison[comparison["method"].isin(["no_shift", "quantile_pair", "quantile_pooled"])]
sns.boxplot(data=plot_df, x="method", y="jsd", hue="effects", ax=ax, fliersize=1)
ax.set(ylabel="JSD to the true target", xlabel="",
       title="Quantile-mapping transfer on factorised tables (ratio transfer: 0 up to rounding)")
results.write_figure(fig, out_dir / "transfer_comparison.png")
glue("theorem_fig_transfer_comparison", fig, display=False)
display(fig)
plt.close(fig)

# %% [markdown]
# ## 3. Error growth when the table is not factorised
#
# An interaction term of strength $s$ between attributes 0 and 1 (double-centred,
# so it has no main effect) breaks the assumption. Each table keeps its main
# effects and interaction pattern across strengths; only $s$ changes.

# %%
growth = pd.concat(
    [
        theorem.error_growth(params["interaction_grid"], params["n_tables"], params["seed"], params["levels"],
                             params["n_options"], params["effect_scale"], eff, n_levels=params["n_quantile_levels"])
        for eff in params["effects"]
    ],
    ignore_index=True,
)
results.write_table(growth, out_dir / "error_growth_by_table.csv", prov)
growth_summary = (
    growth.groupby(["effects", "interaction", "method"], sort=False)
    .agg(tables=("table", "size"), jsd_mean=("jsd_mean", "mean"), jsd_max=("jsd_max", "max"),
         wd_scaled_mean=("wd_scaled_mean", "mean"), max_abs_error=("max_abs_error", "max"))
    .reset_index()
)
results.write_table(growth_summary, out_dir / "error_growth.csv", prov)
s_max = max(params["interaction_grid"])
key_numbers["theorem_max_interaction"] = s_max
for row in growth_summary[growth_summary["interaction"] == s_max].itertuples():
    key_numbers[f"theorem_growth_{row.method}_jsd_{row.effects}"] = float(row.jsd_mean)
growth_summary.pivot_table(index=["effects", "interaction"], columns="method", values="jsd_mean")

# %%
g = sns.relplot(data=growth_summary, x="interaction", y="jsd_mean", hue="method", col="effects",
                kind="line", marker="o", height=3.6, aspect=1.2)
g.set(ylabel="mean JSD to the true target", xlabel="interaction strength")
for ax in g.axes.flat:
    ax.set_yscale("symlog", linthresh=1e-3)  # linear below 1e-3, so the exact zeros show
    ax.set_ylim(bottom=0)
g.figure.suptitle("Transfer error as the factorisation assumption fails", y=1.03)
results.write_figure(g.figure, out_dir / "error_growth.png")
glue("theorem_fig_error_growth", g.figure, display=False)
display(g.figure)
plt.close(g.figure)

# %% [markdown]
# ## 4. Finite samples: a rare subgroup
#
# Every subgroup but one gets `reference_size` respondents; the target gets
# `rare_size`. The target is estimated from its own answers (`empirical`, raw and
# smoothed) or transferred from the reference subgroups' (smoothed) empirical
# distributions. Transfer estimates do not use the target's sample, so they are
# flat in `rare_size`. Theorem 1 is an identification result: it says nothing
# about which wins at a given size.

# %%
finite = pd.concat(
    [
        theorem.finite_sample(params["reference_sizes"], params["rare_sizes"], params["repetitions"], params["seed"],
                              params["levels"], params["n_options"], s, params["effect_scale"], eff,
                              params["smoothing"], params["n_quantile_levels"])
        for eff in params["effects"]
        for s in params["finite_interactions"]
    ],
    ignore_index=True,
)
finite_summary = theorem.summarize_finite(finite)
results.write_table(finite_summary, out_dir / "finite_sample.csv", prov)
breaks = pd.concat(
    [theorem.break_even(finite_summary, own="empirical", transfer=t) for t in theorem.METHODS], ignore_index=True
)
results.write_table(breaks, out_dir / "break_even.csv", prov)
finite_summary.pivot_table(index=["effects", "interaction", "reference_size", "rare_size"], columns="method",
                           values="jsd_mean")

# %% [markdown]
# The smallest rare size on the grid at which the target's own raw sample is at
# least as accurate (mean JSD) as each transfer (`NaN`: never on this grid).

# %%
ref_max = max(params["reference_sizes"])
key_numbers["theorem_reference_size"] = ref_max
for row in breaks[(breaks["interaction"] == min(params["finite_interactions"]))
                  & (breaks["reference_size"] == ref_max)].itertuples():
    key_numbers[f"theorem_break_even_{row.transfer}_{row.effects}"] = float(row.break_even_rare_size)
breaks.pivot_table(index=["effects", "interaction", "reference_size"], columns="transfer",
                   values="break_even_rare_size", dropna=False)

# %%
g = sns.relplot(data=finite_summary, x="rare_size", y="jsd_mean", hue="method", style="reference_size",
                row="effects", col="interaction", kind="line", marker="o", height=3.4, aspect=1.25)
g.set(xscale="log", yscale="log", xlabel="respondents in the rare subgroup", ylabel="mean JSD to the truth")
g.figure.suptitle("Rare subgroup: own sample vs shift transfer from large subgroups", y=1.02)
results.write_figure(g.figure, out_dir / "finite_sample.png")
glue("theorem_fig_finite_sample", g.figure, display=False)
display(g.figure)
plt.close(g.figure)

# %% [markdown]
# ## Key numbers
#
# Glued under these names for the Jupyter Book (`{glue:text}` `theorem_max_error`, ...)
# and written to `key_numbers.csv`. Effects-specific names end in the effects
# kind; break-even sizes are for the smallest finite-sample interaction and the
# largest reference size (`NaN`: beyond the grid).

# %%
for name, value in key_numbers.items():
    glue(name, value, display=False)
key_table = pd.DataFrame({"name": list(key_numbers), "value": list(key_numbers.values())})
results.write_table(key_table, out_dir / "key_numbers.csv", prov)
key_table

# %% [markdown]
# ## Run metadata
#
# Code version, package versions, the metric rules and these parameters, next
# to the tables in `output_dir`.

# %%
meta_path = results.write_metadata(
    out_dir,
    study="theorem",
    params=params,
    tables=sorted(p.name for p in out_dir.path.glob("*.csv")),
    figures=sorted(p.name for p in out_dir.path.glob("*.png")),
)
print(f"wrote {meta_path.name}; {out_dir.shown} holds:")
out_dir.commit()  # the tables replace the output folder's previous ones as one set
print(sorted(p.name for p in out_dir.final.iterdir()))
