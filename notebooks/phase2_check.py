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
# # A known-truth check of DSA's Phase 2
#
# On real surveys the true subgroup distributions are unknown, and DSA never beat
# TKFT in our reference runs. Here the truth is known: respondents are drawn from
# Theorem 1's factorised model $P(C \mid b) \propto \prod_k \phi_k(C, b_k)$
# (`dsalib.theorem.random_factorised`, ordinal main effects), optionally with an
# interaction between the first two attributes, and put in a synthetic survey with
# readable wordings (`dsalib.known_truth`). Subgroup sizes are unequal, as in a
# real survey. We vary the respondents per subgroup and the interaction, and ask:
#
# 1. **Can Phase 2's targets help at all?** Without a language model: take a
#    Phase 1 that fits the training sample exactly (TS), build Phase 2's targets
#    (`dsalib.quantile.shift_plan`, as `run_phase2` does) and move every trained
#    subgroup to the minimiser of its Phase 2 loss (`ideal-P2(TS)`). Do this with
#    the paper's quantile-mapping operator and with Theorem 1's ratio operator.
# 2. **Does it help with the embedded model?** TKFT and DSA with SmolLM2-135M,
#    with the diagnostics that say why: how well Phase 1 tells subgroups apart
#    (`resolution`), how close the targets are, and whether Phase 2 moved the
#    predictions toward them.
#
# Errors: JSD (natural log) against the exact truth, unweighted mean over every
# subgroup of the grid; MNL (the main-effects logit, the correct model family
# when the interaction is 0) is the statistical reference.

# %%
import matplotlib

matplotlib.use("Agg")
import pandas as pd
import torch
from IPython.display import display
from myst_nb import glue

from dsalib import config, known_truth, report, results, study

report.style()
results.use_png_figures()  # figures display (and glue) as PNG under the headless Agg backend
_names_before_parameters = set(globals())

# %% tags=["parameters"]
seed = 0  # base seed of the tables and samples
levels = [2, 3, 4]  # levels of each background attribute (at most 4 attributes of at most 4 levels)
n_options = 5  # options of the core question (2-5)
effect_scale = 1.0  # s.d. of the ordinal main effects (1.0: truth subgroups differ by JSD ~0.03 from the mean)
imbalance = 1.0  # how unequal the level shares are (0: equal subgroup sizes)
per_subgroup = [5, 20, 50, 150]  # mean training respondents per subgroup (part 1)
interactions = [0.0, 0.5]  # strength of the non-factorised term (part 1)
n_tables = 10  # random tables per cell (part 1)
operators = ["quantile", "ratio"]  # Phase 2 operator kinds compared in part 1
model = "smollm2-135m"  # the embedded language model (part 2)
llm_per_subgroup = [20, 150]  # part 2 grid (empty: skip part 2)
llm_interactions = [0.0]
llm_tables = 1
phase1 = {}  # Phase1Config fields (default: epochs chosen on validation data)
variants = {  # DSA variants: name -> Phase2Config fields (the guard is off to see what Phase 2 does)
    "DSA": {"guard": False},
    "DSA-ratio": {"guard": False, "operator": "ratio", "reference": "phase1"},
}
output_dir = None  # None means runs/phase2_check/default/ (git-ignored); relative paths are under the repository root

# %%
cfg = config.from_notebook("phase2_check", globals(), _names_before_parameters)
params = known_truth.check_params(cfg.to_params())
out_dir = study.OutputFolder(study.output_dir_for(cfg))  # tables go to a temporary folder, swapped in at the end
prov = results.provenance(seeds=[params["seed"]], data_source="synthetic factorised surveys (dsalib.known_truth)")
torch.set_num_threads(2)
key_numbers = {}
display(report.table(pd.DataFrame({"parameter": list(params), "value": list(params.values())}),
                     caption="The parameters of this run", max_rows=30))

# %% [markdown]
# ## 1. Phase 2's targets, without a language model
#
# `transfer_bias`: JSD from the target to the truth when the operators are
# estimated from the exact truth and applied to it (the operator kind's own
# error); `target_jsd` / `phase1_jsd`: over the training pairs, JSD to the
# smaller subgroup's truth of its target and of its (TS) Phase 1 distribution.

# %%
errors1, diag1 = known_truth.target_study(
    params["per_subgroup"], params["interactions"], params["n_tables"], params["levels"], params["n_options"],
    params["effect_scale"], params["imbalance"], operators=params["operators"], seed=params["seed"])
summary1 = (errors1.groupby(["per_subgroup", "interaction", "operator", "method"]).jsd_mean.mean()
            .unstack("method").reset_index())
summary1["ideal-P2 - TS"] = summary1["ideal-P2(TS)"] - summary1["TS"]
cols = ["pairs", "transfer_bias", "target_jsd_TS", "phase1_jsd_TS", "resolution_truth", "median_size"]
diag1_summary = diag1.groupby(["per_subgroup", "interaction", "operator"])[
    [c for c in cols if c in diag1]].mean().reset_index()
results.write_table(errors1, out_dir / "targets_runs.csv", prov)
results.write_table(summary1, out_dir / "targets.csv", prov)
results.write_table(diag1_summary, out_dir / "targets_diagnostics.csv", prov)
display(report.table(summary1, caption="Mean JSD to the truth (Phase 2's targets without a language model)",
                     max_rows=16))
display(report.table(diag1_summary, caption="Diagnostics of the targets, mean over tables", max_rows=16))

# %%
curves = errors1[errors1.method != "MNL"].assign(
    curve=lambda d: d.method.where(d.method == "TS", d.method + " " + d.operator))
mean_curves = curves.groupby(["interaction", "curve", "per_subgroup"], as_index=False).jsd_mean.mean()
inters = list(dict.fromkeys(mean_curves.interaction))
# TS in its colour; each ideal Phase 2 in the colour of its operator's pooled transfer
colour = {c: report.method_color("TS") if c == "TS" else report.method_color(f"{c.split()[-1]}_pooled")
          for c in mean_curves.curve.unique()}
fig, axes = report.figure(1, len(inters), height=4.2, sharey=True)
for ax, inter in zip(axes[0], inters):
    d = mean_curves[mean_curves.interaction == inter]
    for c in sorted(d.curve.unique()):  # a line joins one curve's sizes (an ordered axis)
        dc = d[d.curve == c].sort_values("per_subgroup")
        ax.plot(dc.per_subgroup, dc.jsd_mean, marker="o", color=colour[c], ls="-" if c == "TS" else "--", label=c)
    report.log_axis(ax, params["per_subgroup"])
    ax.set_yscale("log")
    ax.set_xlabel("training respondents per subgroup (mean)")
    ax.set_title(f"interaction {inter:g}")
axes[0][0].set_ylabel("JSD to the truth")
report.legend_outside(fig, where="below")
report.check_fits_column(fig)
results.write_figure(fig, out_dir / "targets.png")
results.glue_figure("phase2_check_fig_targets", fig)

# %%
for _, r in summary1.iterrows():
    tag = f"{r.operator}_n{int(r.per_subgroup)}_i{r.interaction:g}".replace(".", "p")
    key_numbers[f"p2c_ts_{tag}"] = r["TS"]
    key_numbers[f"p2c_ideal_{tag}"] = r["ideal-P2(TS)"]
for _, r in diag1_summary.iterrows():
    tag = f"{r.operator}_i{r.interaction:g}".replace(".", "p")
    key_numbers[f"p2c_transfer_bias_{tag}"] = r.transfer_bias

# %% [markdown]
# ## 2. TKFT and DSA with the embedded model
#
# `resolution_*`: mean JSD of each subgroup's prediction to the size-weighted
# mean prediction (the truth's value is what a model that resolves the subgroups
# would show); `moved_to_target`: the share of the KL from prediction to target
# (summed over training pairs) that DSA's Phase 2 closed relative to TKFT
# (negative: it moved away; `target_kl_*`: that KL, summed over pairs, for TKFT and DSA).

# %%
if params["llm_per_subgroup"]:
    from dsalib.llm_methods import LanguageModel

    lm = LanguageModel.load(params["model"])
    errors2, diag2 = known_truth.llm_study(
        lm, params["llm_per_subgroup"], params["llm_interactions"], params["llm_tables"], params["levels"],
        params["n_options"], params["effect_scale"], params["imbalance"], params["variants"], params["phase1"],
        seed=params["seed"])
    prov2 = {**prov, "model": params["model"]}
    summary2 = errors2.groupby(["per_subgroup", "interaction", "method"]).jsd_mean.mean().unstack("method")
    dcols = ["variant", "resolution_truth", "resolution_TKFT", "resolution_DSA", "pairs", "dsa_steps",
             "phase1_epochs", "target_jsd_TKFT", "phase1_jsd_TKFT", "target_kl_tkft", "target_kl_dsa",
             "moved_to_target"]
    diag2_table = diag2[["per_subgroup", "interaction", "table_seed"] + [c for c in dcols if c in diag2]]
    results.write_table(errors2, out_dir / "llm_runs.csv", prov2)
    results.write_table(summary2.reset_index(), out_dir / "llm.csv", prov2)
    results.write_table(diag2_table, out_dir / "llm_diagnostics.csv", prov2)
    display(report.table(summary2[report.method_order(summary2.columns)].reset_index(),
                         caption="Mean JSD to the truth with the embedded model"))
    display(report.table(diag2_table, caption="Diagnostics of each fit", max_rows=12))
    for (per, inter), r in summary2.iterrows():
        tag = f"n{int(per)}_i{inter:g}".replace(".", "p")
        for m in ["TS", "MNL", "TKFT", *params["variants"]]:
            key_numbers[f"p2c_llm_{m.replace('-', '_')}_{tag}"] = float(r[m])
    key_numbers["p2c_llm_resolution_tkft"] = float(diag2.resolution_TKFT.mean())
    key_numbers["p2c_llm_resolution_truth"] = float(diag2.resolution_truth.mean())

# %% [markdown]
# ## Key numbers and metadata

# %%
for name, value in key_numbers.items():
    glue(name, value, display=False)
key_table = pd.DataFrame({"name": list(key_numbers), "value": list(key_numbers.values())})
results.write_table(key_table, out_dir / "key_numbers.csv", prov)
meta_path = results.write_metadata(out_dir, study="phase2_check", params=params,
                                   tables=sorted(p.name for p in out_dir.path.glob("*.csv")),
                                   figures=sorted(p.name for p in out_dir.path.glob("*.png")))
final_dir = out_dir.commit()  # the tables replace the output folder's previous ones as one set
display(report.table(key_table, caption="Key numbers", max_rows=20))
print(", ".join(sorted(p.name for p in final_dir.iterdir())))
