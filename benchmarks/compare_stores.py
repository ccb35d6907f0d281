"""Compare the numbers of two result-store roots, store by store, record by record.

    .venv/bin/python benchmarks/compare_stores.py NEW_ROOT REFERENCE_ROOT

For every store folder under NEW_ROOT that REFERENCE_ROOT also has (same name,
so the same store key), it compares each record's numbers and each
per-subgroup table's numeric columns, and prints per method the largest
absolute differences (timing fields included, so they can be told apart).
E.g. after ``benchmarks/headline_profile.py --store-root /tmp/new`` against the
stores that ``make outputs`` filled (``cache/runs``): it says whether a code
change moved any result.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

TIMING = ("seconds", "fit_seconds")


def compare(new_root: Path, ref_root: Path) -> dict:
    """Largest absolute difference per (method, field); ``per_subgroup`` is any numeric per-subgroup column."""
    worst: dict = {}
    n = 0
    for store in sorted(p for p in new_root.iterdir() if (p / "records").is_dir()):
        ref = ref_root / store.name
        if not ref.is_dir():
            print(f"no reference store for {store.name}", file=sys.stderr)
            continue
        for rec in sorted((store / "records").glob("*.json")):
            other = ref / "records" / rec.name
            if not other.is_file():
                print(f"no reference record {store.name}/{rec.name}", file=sys.stderr)
                continue
            a, b = json.loads(rec.read_text()), json.loads(other.read_text())
            method = a["key"]["method"]
            for k, v in a["record"].items():
                w = b["record"].get(k)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(w, (int, float)):
                    if not (math.isnan(v) and math.isnan(w)):
                        worst[(method, k)] = max(worst.get((method, k), 0.0), abs(v - w))
            x = pd.read_csv(store / "per_subgroup" / rec.with_suffix(".csv").name)
            y = pd.read_csv(ref / "per_subgroup" / rec.with_suffix(".csv").name)
            cols = list(x.select_dtypes("number").columns)
            if cols:
                d = float(np.nanmax(np.abs(x[cols].to_numpy(float) - y[cols].to_numpy(float))))
                worst[(method, "per_subgroup")] = max(worst.get((method, "per_subgroup"), 0.0), d)
            n += 1
    worst["_records"] = n
    return worst


def main(argv=None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.exit(__doc__)
    new_root, ref_root = Path(args[0]), Path(args[1])
    for root in (new_root, ref_root):
        if not root.is_dir():
            sys.exit(f"error: {root} is not a folder of result stores")
    worst = compare(new_root, ref_root)
    print(f"{worst.pop('_records')} records compared")
    for m in sorted({m for m, _ in worst}):
        results = sorted(((d, k) for (mm, k), d in worst.items() if mm == m and k not in TIMING and d > 0),
                         reverse=True)
        print(f"{m:10s}", "identical" if not results else ", ".join(f"{k} {d:.1e}" for d, k in results[:4]))


if __name__ == "__main__":
    main()
