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
import pandas as pd
from IPython.display import display
from matplotlib.lines import Line2D
from myst_nb import glue

from dsalib import config, report, results, study, theorem

report.style()
results.use_png_figures()  # figures display (and glue) as PNG under the headless Agg backend
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
display(report.table(pd.DataFrame({"parameter": list(params), "value": list(params.values())}),
                     caption="The parameters of this run", max_rows=30))

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
display(report.table(recovery_summary.assign(max_abs_error=recovery_summary.max_abs_error.map(lambda v: f"{v:.1e}"),
                                             max_jsd=recovery_summary.max_jsd.map(lambda v: f"{v:.1e}"))
                     .rename(columns={"max_abs_error": "largest absolute error", "max_jsd": "largest JSD"}),
                     caption="Ratio transfer on factorised tables: error against the true target"))

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
display(report.table(comparison_summary, caption="Transfer error on factorised tables, per kind of effects"))

# %%
shown = ["no_shift", "quantile_pair", "quantile_pooled"]
fig, axes = report.figure(1, len(params["effects"]), height=4.2, sharey=True)
for ax, eff in zip(axes[0], params["effects"]):
    d = comparison[comparison.effects == eff]
    boxes = ax.boxplot([d[d.method == m].jsd.to_numpy() for m in shown], patch_artist=True, widths=0.6,
                       flierprops={"markersize": 2})
    for patch, m in zip(boxes["boxes"], shown):
        patch.set_facecolor(report.method_color(m))
    ax.set_xticks(range(1, len(shown) + 1), [m.replace("_", " ") for m in shown])
    ax.set_title(f"{eff} effects")
axes[0][0].set_ylabel("JSD to the true target")
fig.suptitle("Quantile-mapping transfer on factorised tables (ratio transfer: 0 up to rounding)")
report.check_fits_column(fig)
results.write_figure(fig, out_dir / "transfer_comparison.png")
results.glue_figure("theorem_fig_transfer_comparison", fig)  # one rendering, glued and shown

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
growth_wide = growth_summary.pivot_table(index=["effects", "interaction"], columns="method", values="jsd_mean")
growth_wide = growth_wide[report.method_order(growth_wide.columns)].reset_index()
display(report.table(growth_wide, caption="Mean JSD to the true target by interaction strength"))

# %%
fig, axes = report.figure(1, len(params["effects"]), height=4.2, sharey=True)
for ax, eff in zip(axes[0], params["effects"]):
    d = growth_summary[growth_summary.effects == eff]
    for m in report.method_order(d.method):  # a line joins one method's strengths (an ordered axis)
        dm = d[d.method == m].sort_values("interaction")
        ax.plot(dm.interaction, dm.jsd_mean, marker="o", color=report.method_color(m), label=m.replace("_", " "))
    ax.set_yscale("symlog", linthresh=1e-3)  # linear below 1e-3, so the exact zeros show
    ax.set_ylim(bottom=0)  # JSD is never negative
    ax.set_xlabel("interaction strength")
    ax.set_title(f"{eff} effects")
axes[0][0].set_ylabel("mean JSD to the true target")
report.legend_outside(fig, where="below")
report.check_fits_column(fig)
results.write_figure(fig, out_dir / "error_growth.png")
results.glue_figure("theorem_fig_error_growth", fig)  # one rendering, glued and shown

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
finite_wide = finite_summary.pivot_table(index=["effects", "interaction", "reference_size", "rare_size"],
                                         columns="method", values="jsd_mean")
finite_wide = finite_wide[report.method_order(finite_wide.columns)].reset_index()
display(report.table(finite_wide, caption="Mean JSD of the rare subgroup's estimate", max_rows=16))

# %% [markdown]
# The smallest rare size on the grid at which the target's own raw sample is at
# least as accurate (mean JSD) as each transfer ("—": never on this grid).

# %%
ref_max = max(params["reference_sizes"])
key_numbers["theorem_reference_size"] = ref_max
for row in breaks[(breaks["interaction"] == min(params["finite_interactions"]))
                  & (breaks["reference_size"] == ref_max)].itertuples():
    key_numbers[f"theorem_break_even_{row.transfer}_{row.effects}"] = float(row.break_even_rare_size)
breaks_wide = breaks.pivot_table(index=["effects", "interaction", "reference_size"], columns="transfer",
                                 values="break_even_rare_size", dropna=False)
breaks_wide = breaks_wide[report.method_order(breaks_wide.columns)].reset_index()
display(report.table(breaks_wide, caption="Break-even rare size: own sample at least as accurate as the transfer",
                     missing="never on this grid"))

# %%
effs, inters = params["effects"], list(dict.fromkeys(finite_summary.interaction))
styles = dict(zip(sorted(set(finite_summary.reference_size)), ["-", "--", ":", "-."]))
fig, axes = report.figure(len(effs), len(inters), height=3.4 * len(effs), sharex=True, sharey=True)
for i, eff in enumerate(effs):
    for j, s_ in enumerate(inters):
        ax = axes[i][j]
        d = finite_summary[(finite_summary.effects == eff) & (finite_summary.interaction == s_)]
        for m in report.method_order(d.method):  # lines join one method's sizes (an ordered axis)
            for ref, ls in styles.items():
                dm = d[(d.method == m) & (d.reference_size == ref)].sort_values("rare_size")
                ax.plot(dm.rare_size, dm.jsd_mean, marker="o", ms=3, ls=ls, color=report.method_color(m),
                        label=m.replace("_", " ") if ref == min(styles) else None)
        report.log_axis(ax, params["rare_sizes"])
        ax.set_yscale("log")
        ax.set_title(f"{eff} effects, interaction {s_:g}")
    axes[i][0].set_ylabel("mean JSD to the truth")
for ax in axes[-1]:
    ax.set_xlabel("respondents in the rare subgroup")
handles, labels = [], []
for ax in axes.flat:
    for h, lab in zip(*ax.get_legend_handles_labels()):
        if lab not in labels:
            handles.append(h)
            labels.append(lab)
handles += [Line2D([], [], color="0.3", ls=ls) for ls in styles.values()]
labels += [f"reference subgroups of {ref:,}" for ref in styles]
report.legend_outside(fig, where="below", handles=handles, labels=labels, ncol=3)
report.check_fits_column(fig)
results.write_figure(fig, out_dir / "finite_sample.png")
results.glue_figure("theorem_fig_finite_sample", fig)  # one rendering, glued and shown

# %% [markdown]
# ## Key numbers
#
# Glued under these names for the Jupyter Book (`{glue:text}` `theorem_max_error`, ...)
# and written to `key_numbers.csv`. Effects-specific names end in the effects
# kind; break-even sizes are for the smallest finite-sample interaction and the
# largest reference size (shown as "—", beyond the grid, when the break-even size is past it).

# %%
for name, value in key_numbers.items():
    glue(name, value, display=False)
key_table = pd.DataFrame({"name": list(key_numbers), "value": list(key_numbers.values())})
results.write_table(key_table, out_dir / "key_numbers.csv", prov)
tiny = lambda v: f"{v:.1e}" if isinstance(v, float) and 0 < abs(v) < 1e-3 else v  # noqa: E731 (rounding-level values)
display(report.table(key_table.assign(value=key_table.value.map(tiny)), caption="Key numbers glued into the book",
                     max_rows=20, missing="beyond the grid"))

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
final_dir = out_dir.commit()  # the tables replace the output folder's previous ones as one set
print(", ".join(sorted(p.name for p in final_dir.iterdir())))
