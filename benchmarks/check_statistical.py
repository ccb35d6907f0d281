"""Reproduce the DESIGN.md §7 table of statistical baselines on the embedded ESS9 GB extract.

Enhancement protocol: questions imbgeco, imueclt, imwbcnt, lrscale; n = 500
training respondents; seeds 0-4; truth = the full data (``mode="full"``);
errors averaged unweighted over the truth subgroups with ≥ 10 respondents,
then over questions and seeds.  WD is shown divided by K-1 (``wd_scaled``).

Run:  .venv/bin/python benchmarks/check_statistical.py [--seeds 0 1 2 3 4] [--n 500]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from dsalib import baselines, metrics
from dsalib.shrinkage import EBShrinkage
from dsalib.statistical import MainEffectsLogit, OrdinalLogit
from dsalib.surveys import enhancement_split, load_survey

QUESTIONS = ("imbgeco", "imueclt", "imwbcnt", "lrscale")
REFERENCE = {  # DESIGN.md §7: mean JSD, mean WD/(K-1)
    "TS": (0.170, 0.100),
    "MNL": (0.085, 0.073),
    "POLR": (0.082, 0.064),
    "EB-MNL": (0.080, 0.069),
    "floor": (0.053, 0.051),
}


def methods(seed: int) -> list:
    return [
        baselines.TrainingSample(),
        MainEffectsLogit(seed=seed),
        OrdinalLogit(),
        EBShrinkage(prior=MainEffectsLogit(seed=seed)),
    ]


def run(questions=QUESTIONS, n: int = 500, seeds=range(5)) -> pd.DataFrame:
    survey = load_survey("ess9")
    rows = []
    for q in questions:
        for seed in seeds:
            split = enhancement_split(survey, q, n, seed, mode="full")
            for method in methods(seed):
                t0 = time.perf_counter()
                method.fit(split.train)
                pred = method.predict(split.truth.keys)
                s = metrics.summarize(metrics.evaluate(pred, split.truth))
                extra = {"alpha": method.alpha_} if isinstance(method, EBShrinkage) else {}
                if isinstance(method, MainEffectsLogit):
                    extra = {"C": method.C_}
                rows.append({"question": q, "seed": seed, "method": method.name,
                             "seconds": time.perf_counter() - t0, **s, **extra})
            s = metrics.summarize(baselines.noise_floor(split.truth, seed=seed))
            rows.append({"question": q, "seed": seed, "method": "floor", "seconds": 0.0, **s})
    return pd.DataFrame(rows)


def table(results: pd.DataFrame) -> pd.DataFrame:
    order = list(REFERENCE)
    out = results.groupby("method")[["jsd_mean", "wd_scaled_mean", "seconds"]].mean()
    out = out.reindex([m for m in order if m in out.index])
    out["ref_jsd"] = [REFERENCE[m][0] for m in out.index]
    out["ref_wd_scaled"] = [REFERENCE[m][1] for m in out.index]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(5)))
    ap.add_argument("--questions", nargs="+", default=list(QUESTIONS))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = run(args.questions, args.n, args.seeds)
    pd.set_option("display.width", 120)
    print(f"ESS9 GB embedded, n={args.n}, seeds {args.seeds}, truth=full, "
          "unweighted mean over truth subgroups with >= 10 respondents")
    print("\nPer question (jsd_mean / wd_scaled_mean):")
    per_q = res.pivot_table(index="method", columns="question", values=["jsd_mean", "wd_scaled_mean"])
    print(per_q.round(3).to_string())
    if "alpha" in res:
        a = res.dropna(subset=["alpha"])["alpha"]
        print(f"\nEB alpha: median {a.median():.1f} (range {a.min():.1f}-{a.max():.1f})")
    if "C" in res:
        print("MNL chosen C:", res.dropna(subset=["C"])["C"].round(4).value_counts().to_dict())
    print("\nMean over questions and seeds (WD shown divided by K-1):")
    print(table(res).round(3).to_string())
    print(f"\nsubgroups evaluated per split: {sorted(res['subgroups'].unique().tolist())}")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
