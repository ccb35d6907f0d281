"""An Enhancement summary table computed from a store root, beside a committed one.

    .venv/bin/python benchmarks/compare_summary.py STORE_ROOT \
        [--params params/enhancement/ess9.yaml] [--summary outputs/enhancement/ess9/summary.csv]

It reads the results of the parameter file's run from STORE_ROOT (computing
nothing: every result must be stored there, e.g. by
``benchmarks/headline_profile.py --store-root STORE_ROOT``), builds the summary
table the notebook writes (mean JSD and WD per truth mode and method), and prints
per metric the largest absolute difference from the committed table and how many
rows change at the three decimals the report prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store_root")
    ap.add_argument("--params", default=str(ROOT / "params" / "enhancement" / "ess9.yaml"))
    ap.add_argument("--summary", default=str(ROOT / "outputs" / "enhancement" / "ess9" / "summary.csv"))
    args = ap.parse_args(argv)

    import pandas as pd
    import yaml

    from dsalib import config, experiments

    with open(args.params, encoding="utf-8") as fh:
        cfg = config.from_params("enhancement", yaml.safe_load(fh) or {})
    for mode in cfg.modes:
        if not (experiments.store_dir_for(cfg, mode, args.store_root) / "records").is_dir():
            sys.exit(f"error: {args.store_root} holds no {mode} store of {args.params}; run it there first")
    computed = []
    res = experiments.run_enhancement(cfg, store_root=args.store_root,
                                      progress=lambda line: computed.append(line))
    if any(": jsd=" in line for line in computed):
        print(f"note: {sum(': jsd=' in line for line in computed)} results were missing and were computed now")
    new = experiments.summary_table(res, by=["truth_mode"]).reset_index()
    ref = pd.read_csv(args.summary)
    both = new.merge(ref, on=["truth_mode", "method"], suffixes=("_new", "_ref"))
    for col in ("jsd_mean", "wd_scaled_mean", "wd_mean"):
        diff = (both[f"{col}_new"] - both[f"{col}_ref"]).abs()
        changed = both[f"{col}_new"].round(3) != both[f"{col}_ref"].round(3)
        worst = both.loc[diff.idxmax()]
        print(f"{col}: max |diff| {diff.max():.2e} ({worst['method']}, {worst['truth_mode']}); "
              f"rows whose 3-decimal value changed: {int(changed.sum())} of {len(both)}")


if __name__ == "__main__":
    main()
