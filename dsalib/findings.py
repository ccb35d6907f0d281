"""The report's headline: what the Enhancement runs found, across datasets, beside the paper.

Everything here reads committed result tables; nothing runs an experiment.

- :func:`load_enhancement` reads ``outputs/enhancement/<dataset>/results.csv`` (one row
  per dataset, question, seed, method and truth mode).
- :func:`ratios_to_ts` divides each method's error by the training sample's (``TS``) in
  the same dataset and truth mode. Absolute errors of this repository and of the paper
  differ by an order of magnitude (a 135M model on a few thousand respondents against
  4B-32B models on tens of thousands), so ratios to ``TS`` and to the noise floor are what
  can be set side by side.
- :func:`paper_ratios` does the same for the paper's Table 1 (``book/_data``).
- :func:`pairwise_share` counts the runs where one method is below another (e.g. DSA
  below TKFT), :func:`headline` collects the numbers of the book's "What we found" box.
- :func:`load_better_than_ts` and :func:`load_data_savings` read the robustness and data
  efficiency studies' tables at the Enhancement training size.

Ratio definition: for a dataset and truth mode, ``ratio = mean error of the method /
mean error of TS``, both means over questions and seeds (the paper's Table 1 ratio is
the same ratio of means). Its spread is the standard deviation over seeds of the
per-seed ratio (each seed's errors averaged over questions first).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from . import methods as method_registry
from .errors import DsaError
from .report import method_order

REPO = Path(__file__).resolve().parent.parent
ENHANCEMENT_DIR = REPO / "outputs" / "enhancement"
PAPER_TABLE1_JSD = REPO / "book" / "_data" / "paper_table1_enhancement_jsd.csv"
PAPER_TABLE1_WD = REPO / "book" / "_data" / "paper_table1_enhancement_wd.csv"
PAPER_TABLE2 = REPO / "book" / "_data" / "paper_table2_generation.csv"
KEY_COLUMNS = ("dataset", "truth_mode", "question", "seed", "method")
METRICS = ("jsd_mean", "wd_scaled_mean", "wd_mean")
#: The LLM methods of the paper's Table 1.
PAPER_METHODS = ("Direct", "PE", "AAE", "TKFT", "DSA")


def _resolve(path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO / p


def load_enhancement(root=ENHANCEMENT_DIR, datasets: Sequence[str] | None = None) -> pd.DataFrame:
    """The Enhancement runs' per-(dataset, question, seed, method, truth mode) rows from ``<root>/*/results.csv``.

    ``datasets``: the run folders to read (default: every folder with a ``results.csv``).
    Raises :class:`~dsalib.errors.DsaError` naming the folder when a run is missing, a
    table lacks a column, or a (dataset, truth mode, question, seed) has no ``TS`` row.
    """
    root = _resolve(root)
    if not root.is_dir():
        raise DsaError(f"no Enhancement outputs at {root}; run: scripts/run_outputs.py --study enhancement")
    found = sorted(p.parent.name for p in root.glob("*/results.csv"))
    names = list(datasets) if datasets else found
    if not names:
        raise DsaError(f"{root} holds no <dataset>/results.csv; run: scripts/run_outputs.py --study enhancement")
    absent = sorted(set(names) - set(found))
    if absent:
        raise DsaError(f"no results.csv for {absent} under {root} (found {found}); "
                       f"run: scripts/run_outputs.py --study enhancement --name {absent[0]}")
    parts = []
    for name in names:
        path = root / name / "results.csv"
        df = pd.read_csv(path)
        need = set(KEY_COLUMNS) - {"dataset"} | set(METRICS)
        lacking = sorted(need - set(df.columns))
        if lacking:
            raise DsaError(f"{path} lacks column(s) {lacking}")
        df = df.assign(dataset=df["dataset"] if "dataset" in df.columns else name)
        parts.append(df[list(KEY_COLUMNS) + list(METRICS) + [c for c in ("n", "model") if c in df.columns]])
    runs = pd.concat(parts, ignore_index=True)
    dup = runs.duplicated(list(KEY_COLUMNS))
    if dup.any():
        raise DsaError(f"duplicate rows for {runs.loc[dup, list(KEY_COLUMNS)].iloc[0].to_dict()}")
    has_ts = runs[runs.method == "TS"].set_index(["dataset", "truth_mode", "question", "seed"]).index
    every = runs.set_index(["dataset", "truth_mode", "question", "seed"]).index.unique()
    lack_ts = every.difference(has_ts)
    if len(lack_ts):
        raise DsaError(f"runs without a TS row (the ratio's denominator): {list(lack_ts[:3])}; "
                       f"include TS in the Enhancement methods")
    return runs


def ratios_to_ts(runs: pd.DataFrame, metric: str = "jsd_mean") -> pd.DataFrame:
    """Each method's error as a ratio to TS's, per dataset and truth mode (see the module docstring).

    Returns columns dataset, truth_mode, method, ``error`` (mean over questions and seeds),
    ``ts_error``, ``ratio``, ``ratio_sd`` (over seeds), ``seeds``; methods in display order.
    """
    if metric not in runs.columns:
        raise DsaError(f"ratios_to_ts: no column {metric!r}; choose from {[m for m in METRICS if m in runs.columns]}")
    keys = ["dataset", "truth_mode"]
    per_seed = runs.groupby(keys + ["method", "seed"], sort=False)[metric].mean().rename("error").reset_index()
    ts_seed = per_seed[per_seed.method == "TS"].set_index(keys + ["seed"])["error"].rename("ts")
    per_seed = per_seed.join(ts_seed, on=keys + ["seed"])
    per_seed["ratio_seed"] = per_seed["error"] / per_seed["ts"]
    g = per_seed.groupby(keys + ["method"], sort=False)
    out = pd.DataFrame({
        "error": g["error"].mean(),
        "ts_error": g["ts"].mean(),
        "ratio_sd": g["ratio_seed"].std(ddof=1),
        "seeds": g.size(),
    }).reset_index()
    out["ratio"] = out["error"] / out["ts_error"]
    rank = {m: i for i, m in enumerate(method_order(out["method"]))}
    out = out.sort_values(["dataset", "truth_mode", "method"], key=lambda s: s.map(rank) if s.name == "method" else s)
    return out[["dataset", "truth_mode", "method", "error", "ts_error", "ratio", "ratio_sd", "seeds"]].reset_index(drop=True)


def paper_ratios(path=PAPER_TABLE1_JSD) -> pd.DataFrame:
    """The paper's Table 1 as ratios to its TS row: columns llm, method, dataset, error, ratio.

    The paper's table has one TS row (no LLM) and one block of methods per LLM; its
    ``Avg.`` column is kept as dataset ``Avg.``.
    """
    path = _resolve(path)
    if not path.exists():
        raise DsaError(f"the paper's Table 1 is not at {path} (book/_data holds the transcription)")
    t = pd.read_csv(path)
    if not {"LLM", "method"} <= set(t.columns) or (t["method"] == "TS").sum() != 1:
        raise DsaError(f"{path}: expected columns LLM, method, <datasets> and exactly one TS row")
    cols = [c for c in t.columns if c not in ("LLM", "method")]
    ts = t[t.method == "TS"].iloc[0]
    rows = []
    for _, r in t[t.method != "TS"].iterrows():
        for c in cols:
            rows.append({"llm": r["LLM"], "method": r["method"], "dataset": c, "error": float(r[c]),
                         "ts_error": float(ts[c]), "ratio": float(r[c]) / float(ts[c])})
    return pd.DataFrame(rows)


def pairwise_share(runs: pd.DataFrame, a: str, b: str, metric: str = "jsd_mean",
                   truth_mode: str | None = None) -> dict:
    """How often ``a``'s error is below ``b``'s over runs (dataset, truth mode, question, seed).

    Returns ``{"runs", "lower", "equal", "higher", "share_lower"}``; ``equal`` counts runs where the
    two errors agree to 1e-12 (e.g. DSA whose Phase 2 was rejected is TKFT exactly).
    """
    df = runs if truth_mode is None else runs[runs.truth_mode == truth_mode]
    wide = df.pivot_table(index=["dataset", "truth_mode", "question", "seed"], columns="method", values=metric)
    absent = [m for m in (a, b) if m not in wide.columns]
    if absent:
        raise DsaError(f"pairwise_share: method(s) {absent} are not in the runs; they have {sorted(wide.columns)}")
    both = wide[[a, b]].dropna()
    if both.empty:
        raise DsaError(f"pairwise_share: no run has both {a} and {b}")
    diff = both[a] - both[b]
    equal = int((diff.abs() <= 1e-12).sum())
    lower = int((diff < -1e-12).sum())
    return {"runs": len(both), "lower": lower, "equal": equal, "higher": len(both) - lower - equal,
            "share_lower": lower / len(both)}


def headline(runs: pd.DataFrame, metric: str = "jsd_mean") -> dict:
    """The numbers of the "What we found" box, per truth mode (keys end in ``_full`` / ``_heldout``).

    - ``best_llm_<mode>``: the LLM method (registry ``LLM``, EB variants included) with the lowest mean
      ratio to TS over datasets, and ``best_llm_ratio_<mode>`` that ratio;
    - ``mnl_ratio_<mode>``, ``floor_ratio_<mode>``, ``tkft_ratio_<mode>``, ``dsa_ratio_<mode>``: mean ratios over
      datasets; ``tkft_ratio_min/max_<mode>``: TKFT's range over datasets;
    - ``zero_shot_ratio_min_<mode>``: the smallest ratio of ``Direct`` or ``PE`` on any dataset (when run);
    - ``best_paper_method_<mode>`` / ``best_paper_method_ratio_<mode>``: the best of the paper's LLM methods
      (:data:`PAPER_METHODS`, no EB shrinkage);
    - ``best_llm_vs_mnl_<mode>``: best LLM error / MNL error (mean over datasets of the ratio of the two
      ratios), and ``best_llm_beats_mnl_datasets_<mode>``: on how many datasets its ratio is below MNL's;
    - ``dsa_below_tkft_*``: :func:`pairwise_share` of DSA vs TKFT over all runs of the mode;
    - ``datasets``, ``n_datasets``, ``runs_<mode>``.
    """
    r = ratios_to_ts(runs, metric)
    out: dict = {"datasets": ", ".join(sorted(r.dataset.unique())), "n_datasets": int(r.dataset.nunique())}
    for mode in sorted(r.truth_mode.unique()):
        rm = r[r.truth_mode == mode]
        wide = rm.pivot(index="dataset", columns="method", values="ratio")
        need = [m for m in ("MNL", "TKFT", "DSA", "floor") if m not in wide.columns]
        if need:
            raise DsaError(f"headline: truth mode {mode!r} lacks method(s) {need}")
        llm = [m for m in method_registry.LLM if m in wide.columns]
        if not llm:
            raise DsaError(f"headline: truth mode {mode!r} has no LLM method")
        means = wide.mean()
        best = min(llm, key=lambda m: means[m])
        out[f"best_llm_{mode}"] = best
        out[f"best_llm_ratio_{mode}"] = float(means[best])
        for m in ("MNL", "TKFT", "DSA", "floor"):
            out[f"{m.lower()}_ratio_{mode}"] = float(means[m])
        zero_shot = [m for m in ("Direct", "PE") if m in wide.columns]
        if zero_shot:  # the zero-shot methods' smallest ratio on any dataset
            out[f"zero_shot_ratio_min_{mode}"] = float(wide[zero_shot].min().min())
        paper_methods = [m for m in PAPER_METHODS if m in wide.columns]
        best_paper = min(paper_methods, key=lambda m: means[m])
        out[f"best_paper_method_{mode}"] = best_paper
        out[f"best_paper_method_ratio_{mode}"] = float(means[best_paper])
        out[f"tkft_ratio_min_{mode}"] = float(wide["TKFT"].min())
        out[f"tkft_ratio_max_{mode}"] = float(wide["TKFT"].max())
        out[f"best_llm_vs_mnl_{mode}"] = float((wide[best] / wide["MNL"]).mean())
        out[f"best_llm_beats_mnl_datasets_{mode}"] = int((wide[best] < wide["MNL"]).sum())
        pw = pairwise_share(runs, "DSA", "TKFT", metric, truth_mode=mode)
        for k, v in pw.items():
            out[f"dsa_below_tkft_{k}_{mode}"] = v
        out[f"runs_{mode}"] = pw["runs"]
    return out


#: What each method is, in a few words, for sentences such as "the best LLM method, EB-TKFT (...)".
METHOD_GLOSS = {
    "TS": "the training sample", "MNL": "main-effects multinomial logit", "POLR": "proportional-odds ordinal logit",
    "EB-MNL": "shrinkage toward the logit", "Direct": "zero-shot prompting", "PE": "zero-shot persona prompting",
    "AAE": "an adapter on the model's output", "TKFT": "Phase 1 fine-tuning", "DSA": "Phase 1 and 2 fine-tuning",
    "EB-TKFT": "shrinkage toward the fine-tuned model", "EB-DSA": "shrinkage toward the DSA model",
}


def verdicts(h: dict, mode: str = "full") -> dict:
    """The "What we found" box's bold lead sentences for truth ``mode``, chosen from the numbers in ``h``
    (:func:`headline`), so the words cannot contradict the glued figures.

    Keys: ``tkft_vs_ts``, ``dsa_vs_tkft``, ``llm_vs_stat``, ``zero_shot``, ``best_llm_gloss``, ``best_llm_vs_mnl``
    (e.g. "0.1% above").
    """
    need = [f"tkft_ratio_max_{mode}", f"dsa_below_tkft_lower_{mode}", f"best_llm_beats_mnl_datasets_{mode}"]
    missing = [k for k in need if k not in h]
    if missing:
        raise DsaError(f"verdicts: the headline numbers lack {missing} (truth mode {mode!r})")
    tkft_max, tkft_min = h[f"tkft_ratio_max_{mode}"], h[f"tkft_ratio_min_{mode}"]
    if tkft_max < 1:
        tkft = "Fine-tuning beats the training sample, as in the paper."
    elif tkft_min < 1:
        tkft = "Fine-tuning beats the training sample on some datasets only."
    else:
        tkft = "Fine-tuning does not beat the training sample."
    lower, runs = h[f"dsa_below_tkft_lower_{mode}"], h[f"dsa_below_tkft_runs_{mode}"]
    if lower == 0:
        dsa = "DSA did not beat TKFT."
    elif lower < runs / 2:
        dsa = f"DSA beat TKFT in only {lower} of {runs} runs."
    else:
        dsa = f"DSA beat TKFT in {lower} of {runs} runs."
    beats, n = h[f"best_llm_beats_mnl_datasets_{mode}"], h["n_datasets"]
    if beats == 0:
        stat = "No LLM method beat the statistical models."
    elif beats < n:
        stat = "The best LLM method only matches the statistical models."
    else:
        stat = "The best LLM method beat the main-effects logit on every dataset."
    zs = h.get(f"zero_shot_ratio_min_{mode}")
    if zs is None:
        zero = "Zero-shot prompting was not run."
    elif zs > 1:
        zero = "Zero-shot prompting (Direct, PE) is worse than TS on every dataset."
    else:
        zero = "Zero-shot prompting (Direct, PE) beats TS on some datasets."
    r = h[f"best_llm_vs_mnl_{mode}"]
    from .report import format_share

    return {"tkft_vs_ts": tkft, "dsa_vs_tkft": dsa, "llm_vs_stat": stat, "zero_shot": zero,
            "best_llm_gloss": METHOD_GLOSS.get(h[f"best_llm_{mode}"], h[f"best_llm_{mode}"]),
            "best_llm_vs_mnl": f"{format_share(abs(r - 1))} {'above' if r > 1 else 'below'}"}


def headline_frame(ours: pd.DataFrame, paper: pd.DataFrame, paper_llm: str = "Qwen3-4B",
                   paper_dataset: str = "Avg.") -> pd.DataFrame:
    """Ours (per dataset and truth mode) and the paper's (one LLM, one column) ratios in one tidy frame.

    Columns: source ("this repository" or "paper, <llm>"), dataset, truth_mode, method, ratio, ratio_sd.
    The paper scores against the full data only, so its rows have truth_mode "full".
    """
    p = paper[(paper.llm == paper_llm) & (paper.dataset == paper_dataset)]
    if p.empty:
        raise DsaError(f"the paper's table has no {paper_llm!r} rows for {paper_dataset!r}; "
                       f"LLMs {sorted(paper.llm.unique())}, columns {sorted(paper.dataset.unique())}")
    a = ours.assign(source="this repository")[["source", "dataset", "truth_mode", "method", "ratio", "ratio_sd"]]
    b = p.assign(source=f"paper, {paper_llm}", truth_mode="full", ratio_sd=np.nan)[
        ["source", "dataset", "truth_mode", "method", "ratio", "ratio_sd"]]
    return pd.concat([a, b], ignore_index=True)


def _read_study_tables(root, filename: str) -> pd.DataFrame:
    root = _resolve(root)
    paths = sorted(root.glob(f"*/{filename}"))
    if not paths:
        raise DsaError(f"no {filename} under {root}; run its study with scripts/run_outputs.py")
    return pd.concat([pd.read_csv(p).assign(dataset=lambda d, p=p: d["dataset"] if "dataset" in d else p.parent.name)
                      for p in paths], ignore_index=True)


def load_better_than_ts(root=REPO / "outputs" / "robustness", train_size: int | None = None) -> pd.DataFrame:
    """Share of subgroups where each method beats TS (robustness study), per dataset and truth mode.

    ``train_size``: keep one training size (default: every size in the tables). Columns dataset,
    truth_mode, method, train_size, share, better, subgroups.
    """
    t = _read_study_tables(root, "better_than_ts.csv")
    if train_size is not None:
        t = t[t.train_size == train_size]
        if t.empty:
            raise DsaError(f"better_than_ts.csv has no rows at train_size {train_size}")
    return t[["dataset", "truth_mode", "method", "train_size", "share", "better", "subgroups"]].reset_index(drop=True)


def load_data_savings(root=REPO / "outputs" / "data_efficiency", n: int | None = None) -> pd.DataFrame:
    """Data savings (data efficiency study): the TS training size matching each method's error.

    Columns dataset, truth_mode, method, n, ts_equivalent_n, saving (a share of n, ``NaN`` outside the
    TS grid), ``saving_text`` (the study's text, a bound such as "> 58.3%" outside the grid) and
    ``saving_shown`` (for tables: "none (worse than TS)" where the method is worse than TS even at the
    grid's smallest size, instead of the study's "< -900.0%"-style bound).
    """
    t = _read_study_tables(root, "equivalent_sizes.csv")
    if n is not None:
        t = t[t.n == n]
        if t.empty:
            raise DsaError(f"equivalent_sizes.csv has no rows at n {n}")
    t = t[["dataset", "truth_mode", "method", "n", "ts_equivalent_n", "saving", "saving_text", "status"]].copy()
    worse = t["status"].astype(str).str.startswith("worse than TS")
    t["saving_shown"] = t["saving_text"].astype(str).str.replace("-", "−", regex=False)
    t.loc[worse, "saving_shown"] = "none (worse than TS)"
    t.loc[t["saving_text"].isna(), "saving_shown"] = np.nan
    return t.reset_index(drop=True)


#: The Generation splits of the paper's Table 2 and of the generation study, and their average.
GENERATION_SPLITS = ("NewQ", "NewP", "Both", "Avg")


def generation_ratios(root=REPO / "outputs" / "generation", paper=PAPER_TABLE2, metric: str = "jsd") -> pd.DataFrame:
    """Generation errors as ratios to zero-shot ``Direct``, ours (each generation run) and the paper's Table 2.

    Generation has no training sample of the test question, so ``TS`` is not a yardstick there; ``Direct``
    (the untrained model) is, in both experiments. Columns source ("ours, <dataset>" or "paper, <LLM>"),
    method, split (NewQ, NewP, Both, Avg), error, direct_error, ratio. ``metric``: "jsd" or "wd" (the paper's
    WD and our WD/(K−1); ratios are unaffected by the scaling).
    """
    if metric not in ("jsd", "wd"):
        raise DsaError(f"metric must be 'jsd' or 'wd', got {metric!r}")
    ours = _read_study_tables(root, "summary.csv")
    col = {"jsd": "jsd_mean", "wd": "wd_scaled_mean"}[metric]
    need = [f"{col}|{s}" for s in GENERATION_SPLITS]
    missing = [c for c in need if c not in ours.columns]
    if missing or "method" not in ours.columns:
        raise DsaError(f"generation summary.csv under {_resolve(root)} lacks columns {missing or ['method']}; "
                       f"rerun the generation study")
    path = _resolve(paper)
    if not path.exists():
        raise DsaError(f"the paper's Table 2 is not at {path} (book/_data holds the transcription)")
    pt = pd.read_csv(path)
    pcols = {s: f"{metric.upper()} {'Avg.' if s == 'Avg' else s}" for s in GENERATION_SPLITS}
    if not {"LLM", "method", *pcols.values()} <= set(pt.columns):
        raise DsaError(f"{path}: expected columns LLM, method and {sorted(pcols.values())}")
    def ratios(source: str, t: pd.DataFrame, columns: dict, where: str) -> list[dict]:
        t = t.set_index("method")
        if "Direct" not in t.index:
            raise DsaError(f"{where} has no Direct row to divide by")
        return [{"source": source, "method": m, "split": sp, "error": float(t.loc[m, columns[sp]]),
                 "direct_error": float(t.loc["Direct", columns[sp]]),
                 "ratio": float(t.loc[m, columns[sp]]) / float(t.loc["Direct", columns[sp]])}
                for m in t.index for sp in GENERATION_SPLITS]

    ocols = {sp: f"{col}|{sp}" for sp in GENERATION_SPLITS}
    rows = [r for dataset, t in ours.groupby("dataset", sort=True)
            for r in ratios(f"ours, {dataset}", t, ocols, f"the generation run on {dataset}")]
    rows += [r for llm, t in pt.groupby("LLM", sort=False) for r in ratios(f"paper, {llm}", t, pcols, f"{path}: {llm}")]
    return pd.DataFrame(rows)


def scale_facts(root=ENHANCEMENT_DIR, datasets: Sequence[str] | None = None) -> pd.DataFrame:
    """The size of each Enhancement run, read from its tables: one row per dataset.

    Columns dataset, respondents (the extract), n (training sample), model, questions, seeds,
    subgroups (evaluated per question and seed, mean), truth_median (truth respondents per
    evaluated subgroup, median, full truth) and train_median (training respondents per
    evaluated subgroup, median), from ``results.csv`` and the noise-floor rows of ``per_subgroup.csv``.
    """
    runs = load_enhancement(root, datasets)
    root = _resolve(root)
    rows = []
    for name, r in runs.groupby("dataset", sort=True):
        per = pd.read_csv(root / name / "per_subgroup.csv",
                          usecols=["question", "seed", "method", "truth_mode", "n", "train_n", "data_respondents"])
        floor = per[(per.method == "floor") & (per.truth_mode == "full")]
        if floor.empty or floor["train_n"].isna().all():
            raise DsaError(f"{root / name / 'per_subgroup.csv'} has no noise-floor rows with train_n (full truth)")
        rows.append({
            "dataset": name,
            "respondents": int(per["data_respondents"].iloc[0]),
            "n": int(r["n"].iloc[0]) if "n" in r.columns else None,
            "model": str(r["model"].iloc[0]) if "model" in r.columns else None,
            "questions": int(r["question"].nunique()),
            "seeds": int(r["seed"].nunique()),
            "subgroups": float(floor.groupby(["question", "seed"]).size().mean()),
            "truth_median": float(floor["n"].median()),
            "train_median": float(floor["train_n"].median()),
        })
    return pd.DataFrame(rows)


def weighting_effect(unweighted: str = "ess10no", weighted: str = "ess10no_weighted", root=ENHANCEMENT_DIR,
                     metric: str = "jsd_mean") -> pd.DataFrame:
    """How survey weights change each method's error and rank: two Enhancement runs of one dataset.

    ``unweighted``/``weighted``: run folders under ``root`` (the weighted one run with ``weighted_truth`` and
    ``weighted_train``). One row per truth mode and method (the noise floor left out): the mean error of each
    run (over questions and seeds), the change, and the method's rank in each run (1 = lowest error).
    """
    root = _resolve(root)
    runs = {}
    for label, name in (("unweighted", unweighted), ("weighted", weighted)):
        path = root / name / "results.csv"
        if not path.is_file():
            raise DsaError(f"no Enhancement run at {path}; run: scripts/run_outputs.py --study enhancement --name {name}")
        df = pd.read_csv(path)
        runs[label] = df[df.method != "floor"].groupby(["truth_mode", "method"])[metric].mean()
    both = pd.concat(runs, axis=1).dropna()
    if both.empty:
        raise DsaError(f"runs {unweighted} and {weighted} share no (truth mode, method)")
    both["change"] = both["weighted"] - both["unweighted"]
    both["relative_change"] = both["change"] / both["unweighted"]
    for label in ("unweighted", "weighted"):
        both[f"rank_{label}"] = both.groupby(level="truth_mode")[label].rank(method="min").astype(int)
    out = both.reset_index()
    rank = {m: i for i, m in enumerate(method_order(out.method))}
    return out.sort_values(["truth_mode", "method"], key=lambda c: c.map(rank) if c.name == "method" else c,
                           ignore_index=True)
