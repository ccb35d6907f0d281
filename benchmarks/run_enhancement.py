"""Run the Enhancement protocol from the command line and print the summary table.

    python benchmarks/run_enhancement.py --dataset ess9 --questions imbgeco lrscale \
        --seeds 0 1 --methods TS MNL DSA --store /tmp/enh

    python benchmarks/run_enhancement.py --dataset ~/specs/ess11_trust.yaml --data-dir ~/ess \
        --questions trstprl trstlgl --background country gender age --modes full heldout --methods TS MNL

--dataset is a built-in spec name or a path to a spec file (see params/datasets/README.md).
--modes evaluates several ground-truth modes at once: each method is fitted once per
(question, seed) and scored against every mode's truth.  Results are stored per
(question, seed, method, mode): in --store (one mode only), or in the shared stores under
--store-root; re-running resumes.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dsalib import surveys  # noqa: E402
from dsalib.errors import DsaError  # noqa: E402
from dsalib.experiments import DEFAULT_STORE_ROOT, EnhancementConfig, run_enhancement, summary_table  # noqa: E402
from dsalib.llm_methods import LanguageModel  # noqa: E402
from dsalib.methods import needs_model  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--dataset", default="ess9", help="built-in spec name or path to a spec .yaml")
ap.add_argument("--data-dir", default=None, help=f"folder with the archive file (default ${surveys.DATA_DIR_ENV} or ./data)")
ap.add_argument("--source", default="auto", choices=["auto", "file", "embedded"])
ap.add_argument("--questions", nargs="*", help="core questions (default: every question the file has)")
ap.add_argument("--background", nargs="*", help="background attributes (default: the source's default set)")
ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2, 3, 4])
ap.add_argument("--n", type=int, default=500)
ap.add_argument("--modes", nargs="+", default=["full"], choices=list(surveys.TRUTH_MODES),
                help="ground-truth modes to evaluate (e.g. --modes full heldout)")
ap.add_argument("--weighted-truth", action="store_true", help="weight the truth with the source's respondent weight")
ap.add_argument("--methods", nargs="*", default=EnhancementConfig().methods)
ap.add_argument("--model", default="smollm2-135m")
ap.add_argument("--weighting", default="count")
ap.add_argument("--lr", type=float, default=5e-5)
ap.add_argument("--min-pair-size", type=int, default=10)
ap.add_argument("--store", default=None, help="result folder for a single mode")
ap.add_argument("--store-root", default=DEFAULT_STORE_ROOT, help="root of the shared stores (used without --store)")
ap.add_argument("--prefix-cache", default=None, help="folder for the on-disk frozen-prefix cache")
ap.add_argument("--strategy", default="last_layer", choices=["last_layer", "lora", "full"],
                help="what TKFT/DSA train (lora/full are sharded by FSDP under an FSDP accelerate launch)")
ap.add_argument("--device", default=None, help="where the model is loaded (default: this process's GPU, else cpu)")
ap.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                help="the model's dtype (default: bfloat16 on a GPU, float32 on the CPU)")
args = ap.parse_args()

if args.store and len(args.modes) > 1:
    ap.error("--store names one store; with several --modes give --store-root instead")

t0 = time.perf_counter()
try:
    cfg = EnhancementConfig(dataset=args.dataset, questions=args.questions or None, background=args.background or None,
                            seeds=tuple(args.seeds), n=args.n, modes=list(args.modes), methods=tuple(args.methods),
                            model=args.model, data_dir=args.data_dir, source=args.source,
                            weighted_truth=args.weighted_truth,
                            phase1={"weighting": args.weighting, "lr": args.lr},
                            phase2={"lr": args.lr, "min_pair_size": args.min_pair_size}, strategy=args.strategy)
    # load (and check) the data before a model is loaded: a bad spec or file fails in seconds
    survey = surveys.load_survey(cfg.dataset, data_dir=cfg.data_dir, source=cfg.source, questions=cfg.questions,
                                 background=cfg.background)
    if cfg.weighted_truth and not survey.weight:
        raise DsaError(f"--weighted-truth: dataset '{survey.name}' has no respondent weight here: "
                       + survey.unavailable.get("weight", f"the source in use ({survey.source_name}) has no weight column; leave out --weighted-truth"))
except DsaError as exc:
    sys.exit(f"error: {exc}")
placement = {"device": args.device} if args.device else {}
if args.dtype:
    import torch

    placement["dtype"] = getattr(torch, args.dtype)
lm = (LanguageModel.load(args.model, prefix_cache_dir=args.prefix_cache, **placement)
      if any(map(needs_model, args.methods)) else None)
results = run_enhancement(cfg, args.store, lm=lm, modes=args.modes, store_root=args.store_root, survey=survey)
print(summary_table(results, by=["truth_mode"] if len(args.modes) > 1 else ()).round(4).to_string())
print(f"total {time.perf_counter() - t0:.0f}s")
