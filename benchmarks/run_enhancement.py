"""Run the Enhancement protocol from the command line and print the summary table.

    python benchmarks/run_enhancement.py --dataset ess9 --questions imbgeco lrscale \
        --seeds 0 1 --methods TS MNL DSA --store /tmp/enh

Results are stored per (question, seed, method) in --store; re-running resumes.
"""

import argparse
import time

from dsalib.experiments import EnhancementConfig, run_enhancement, summary_table
from dsalib.llm_methods import LanguageModel
from dsalib.methods import needs_model

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--dataset", default="ess9")
ap.add_argument("--questions", nargs="*")
ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2, 3, 4])
ap.add_argument("--n", type=int, default=500)
ap.add_argument("--mode", default="full")
ap.add_argument("--methods", nargs="*", default=EnhancementConfig().methods)
ap.add_argument("--model", default="smollm2-135m")
ap.add_argument("--weighting", default="count")
ap.add_argument("--lr", type=float, default=5e-5)
ap.add_argument("--min-pair-size", type=int, default=10)
ap.add_argument("--store", required=True)
ap.add_argument("--prefix-cache", default=None, help="folder for the on-disk frozen-prefix cache")
args = ap.parse_args()

t0 = time.perf_counter()
cfg = EnhancementConfig(dataset=args.dataset, questions=args.questions, seeds=tuple(args.seeds), n=args.n,
                        modes=[args.mode], methods=tuple(args.methods), model=args.model,
                        phase1={"weighting": args.weighting, "lr": args.lr},
                        phase2={"lr": args.lr, "min_pair_size": args.min_pair_size})
lm = LanguageModel.load(args.model, prefix_cache_dir=args.prefix_cache) if any(map(needs_model, args.methods)) else None
results = run_enhancement(cfg, args.store, lm=lm)
print(summary_table(results).round(4).to_string())
print(f"total {time.perf_counter() - t0:.0f}s")
