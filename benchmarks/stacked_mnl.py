"""Stacked MNL against MNL on the embedded GSS 2018 spending items (Enhancement protocol).

The target question's training sample (n = 500) plus every other core item of
the survey (17 three-option items, all respondents) for ``Stacked-MNL``; MNL
and TS see the target's training sample only.  Questions and background of
``params/enhancement/gss2018.yaml`` (natheal, natenvir, nateduc, natfare; sex,
age, race, party), seeds 0-4, both truths; unweighted mean JSD over the truth
subgroups with >= 10 respondents, then over questions and seeds.

Run:  nice python benchmarks/stacked_mnl.py [--seeds 0 1 2 3 4] [--out stacked.csv]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import yaml

from dsalib import metrics, surveys
from dsalib.methods import make_method

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("TS", "MNL", "Stacked-MNL")


def run(seeds, out: Path | None = None, progress=print) -> pd.DataFrame:
    conf = yaml.safe_load((ROOT / "params" / "enhancement" / "gss2018.yaml").read_text())
    survey = surveys.load_survey("gss2018")
    attrs = survey.check_background(conf["background"])
    rows = []
    for q in conf["questions"]:
        for seed in seeds:
            splits = {m: surveys.enhancement_split(survey, q, 500, seed, m, attrs) for m in surveys.TRUTH_MODES}
            for name in METHODS:
                t0 = time.perf_counter()
                method = make_method(name, survey=survey, seed=seed).fit(splits["full"].train)
                seconds = time.perf_counter() - t0
                for mode, split in splits.items():
                    truth = split.truth.subset(split.truth.n >= 10)
                    s = metrics.summarize(metrics.evaluate(method.predict(truth.keys), truth))
                    rows.append({"question": q, "seed": seed, "truth": mode, "method": name, "seconds": seconds,
                                 "share": getattr(method, "share_", None), **s})
            progress(f"{q} seed={seed}: " + ", ".join(f"{r['method']} {r['jsd_mean']:.4f}" for r in rows[-6:]
                                                     if r["truth"] == "heldout"))
            if out is not None:
                pd.DataFrame(rows).to_csv(out, index=False)
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(5)))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    res = run(args.seeds, args.out)
    print(res.pivot_table(index="truth", columns="method", values="jsd_mean").round(4).to_string())
    st = res[(res.method == "Stacked-MNL") & (res.truth == "full")]
    print("Stacked-MNL chosen share:", st["share"].value_counts().to_dict())
    print("mean seconds to fit:", res[res.truth == "full"].groupby("method")["seconds"].mean().round(1).to_dict())


if __name__ == "__main__":
    main()
