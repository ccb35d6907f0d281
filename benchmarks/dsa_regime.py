"""DSA in the paper's regime: Enhancement with n = 4,000 on the large embedded surveys.

Coarse backgrounds so that training subgroups average ≥ 50 respondents
(gss_abortion: sex x party x decade = 30 subgroups; wvs_immig: region x wave =
21; wvs_justifbribe: region x wave = 39).  Compared, per question and seed and
in both truth modes:

- ``TKFT`` (epochs chosen on validation data) and ``DSA-sel-guard`` /
  ``DSA-sel-noguard``: the project's DSA with the same Phase 1, Phase 2 kept
  only if the validation cross-entropy does not rise / always kept;
- ``TKFT-paper`` and ``DSA-paper``: the paper's setting (Phase 1 one epoch at
  lr 5e-5, Phase 2 pairs of ≥ 10 respondents, no guard);
- ``DSA-ratio``: Phase 2 with Theorem 1's ratio operator and targets fixed at
  the Phase 1 predictions (``dsalib.known_truth`` motivates both), no guard.

For every DSA run it prints the training pairs, attribute changes, Phase 2
steps, whether Phase 2 was kept, and the change in JSD Phase 2 made
(DSA − the TKFT with the same Phase 1).  Results go to shared stores under
``cache/runs`` (resumable) and the summary to ``--out``.

    python benchmarks/dsa_regime.py -f benchmarks/params/dsa_regime/default.yaml
    python benchmarks/dsa_regime.py -f benchmarks/params/dsa_regime/smoke.yaml      # tiny model, seconds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsalib.errors import ParameterError  # noqa: E402
from dsalib.experiments import EnhancementConfig, run_enhancement  # noqa: E402

#: (name, phase1 fields, phase2 fields, methods, the TKFT name whose Phase 1 it shares)
VARIANTS = [
    ("sel", {}, {}, ["TS", "MNL", "TKFT", "DSA"], "TKFT"),
    ("sel-noguard", {}, {"guard": False}, ["DSA"], "TKFT"),
    ("paper", {"epochs": 1, "lr": 5e-5}, {"min_pair_size": 10, "guard": False}, ["TKFT", "DSA"], "TKFT"),
    ("ratio", {}, {"guard": False, "operator": "ratio", "reference": "phase1"}, ["DSA"], "TKFT"),
]
NAMES = {"sel": "DSA-sel-guard", "sel-noguard": "DSA-sel-noguard", "paper": "DSA-paper", "ratio": "DSA-ratio"}


def phase2_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One row per DSA run: pairs, attribute changes, steps, kept."""
    out = []
    for _, r in df[df.method == "DSA"].iterrows():
        rep = r.get("report") if isinstance(r.get("report"), dict) else {}
        p2 = rep.get("phase2", {}) or {}
        out.append({"pairs": p2.get("pairs"), "attribute_changes": p2.get("attribute_changes"),
                    "phase2_steps": p2.get("steps", 0), "phase2_outcome": p2.get("outcome"),
                    "phase1_epochs": (rep.get("phase1") or {}).get("epochs")})
    return pd.DataFrame(out, index=df[df.method == "DSA"].index)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-f", "--params", required=True, help="YAML with runs: [{dataset, background, questions}], "
                                                          "n, seeds, model, modes, out")
    args = ap.parse_args(argv)
    with open(args.params, encoding="utf-8") as fh:
        p = yaml.safe_load(fh)
    need = {"runs", "n", "seeds", "model", "modes", "out"}
    if set(p) != need:
        raise ParameterError(f"{args.params}: needs exactly the keys {sorted(need)}, got {sorted(p)}")
    frames = []
    for run in p["runs"]:
        for name, ph1, ph2, methods, _ in VARIANTS:
            cfg = EnhancementConfig(dataset=run["dataset"], questions=run.get("questions"),
                                    background=run["background"], n=int(p["n"]), seeds=list(p["seeds"]),
                                    modes=list(p["modes"]), methods=list(methods), model=p["model"],
                                    phase1=ph1, phase2=ph2)
            df = run_enhancement(cfg)
            df = df[df.method != "floor"].copy()
            df = df.join(phase2_rows(df))
            df["variant"] = name
            df["method"] = df.method.where(df.method != "DSA", NAMES[name])
            df["method"] = df.method.where(~((df.method == "TKFT") & (name == "paper")), "TKFT-paper")
            frames.append(df)
    res = pd.concat(frames, ignore_index=True)
    keys = ["dataset", "question", "seed", "truth_mode"]
    tk = res[res.method == "TKFT"].set_index(keys).jsd_mean
    tkp = res[res.method == "TKFT-paper"].set_index(keys).jsd_mean
    dsa = res[res.method.str.startswith("DSA")].copy()
    base = [tkp.get(tuple(k)) if m == "DSA-paper" else tk.get(tuple(k))
            for k, m in zip(dsa[keys].itertuples(index=False), dsa.method)]
    dsa["phase2_change_jsd"] = dsa.jsd_mean.to_numpy() - pd.to_numeric(pd.Series(base)).to_numpy()
    cols = keys + ["method", "jsd_mean", "phase2_change_jsd", "pairs", "attribute_changes", "phase2_steps",
                   "phase2_outcome", "phase1_epochs"]
    out = Path(p["out"])
    out.mkdir(parents=True, exist_ok=True)
    dsa[cols].to_csv(out / "phase2_runs.csv", index=False)
    summary = res.groupby(["dataset", "truth_mode", "method"]).jsd_mean.mean().unstack("method")
    summary.to_csv(out / "summary.csv")
    p2 = dsa.groupby(["dataset", "truth_mode", "method"])[
        ["phase2_change_jsd", "pairs", "attribute_changes", "phase2_steps"]].mean()
    p2["run_share"] = dsa.assign(ran=dsa.phase2_outcome.eq("run")).groupby(["dataset", "truth_mode", "method"]).ran.mean()
    p2.to_csv(out / "phase2_summary.csv")
    with pd.option_context("display.width", 200, "display.precision", 4, "display.max_columns", 20):
        print(summary)
        print(p2)
        print(dsa[cols].to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
