"""Data-parallel check: TKFT and DSA fitted by 2 CPU processes under ``accelerate launch`` equal one process.

    python benchmarks/accelerate_check.py                         # prints one JSON line
    python benchmarks/accelerate_check.py --strategy lora --fsdp  # the same, the model sharded by FSDP2

With ``--fsdp`` the two processes are launched with ``--use_fsdp --fsdp_version 2``
and the ``lora`` or ``full`` model is sharded over them (each holds half of its
weights), so every forward pass is collective; ``fsdp_processes`` is then 2.

:func:`measure` runs the Enhancement driver (``dsalib.experiments.run_enhancement``)
on the tiny test model (built from a config, no download) and the embedded ESS9
extract (one question, one seed, TKFT and DSA), once under
``accelerate launch --multi_gpu --num_processes 2`` (on a machine without GPUs
that starts 2 CPU processes talking over gloo) and once in a single process,
and returns what it measured:

- ``accelerate_2proc_max_abs_diff``: the largest difference between the two
  runs' stored predictions (every evaluated subgroup and option, both methods);
- ``duplicate_fits``: result keys written by more than one process, plus
  training runs (``train_loop`` calls) that a process ran alone while it had
  partners (0 when every fit is shared by both processes and stored once);
- ``records``: the 2-process store's record count (one per question, seed and
  method, and the noise floor), ``train_loop_runs`` per process and ``seconds``.

Writes are detected from the files (a record whose modification time a
process's ``save`` call changed), not from the code under test.  The same file
is the worker that each launched process runs (``--worker STORE OUT``).
Measured cost: about 55 s of CPU time over the three processes (most of it
importing torch and transformers); 119-190 s of wall time on 2 cores shared
with other jobs (load average 11).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUESTION, SEED, N = "imbgeco", 0, 200
METHODS = ("TKFT", "DSA")
PHASE1 = {"lr": 1e-2, "max_epochs": 3, "patience": 1}
PHASE2 = {"lr": 1e-2, "min_pair_size": 2, "epochs": 1, "guard": False}  # guard off: Phase 2 runs in the final fit
# lora/full train every block: at lr 1e-2 AdamW turns the summation-order rounding of near-zero gradients into
# whole steps (0.009 apart after one epoch, with or without FSDP), so they train at a tenth of it
LR = {"last_layer": 1e-2, "lora": 1e-3, "full": 1e-3}


def fit(store_dir: Path, log_dir: Path, strategy: str = "last_layer") -> dict:
    """Run the driver in this process (one of several under ``accelerate launch``, or alone); log what it did."""
    import torch

    torch.set_num_threads(1)
    from dsalib import engine, results
    from dsalib.distributed import process_share
    from dsalib.experiments import EnhancementConfig, run_enhancement
    from dsalib.llm_methods import LanguageModel

    rank, world = process_share()
    log = {"rank": rank, "world": world, "train_loop_processes": [], "writes": []}
    real_loop, real_save = engine.train_loop, results.ResultStore.save

    def counted_loop(*args, **kwargs):
        res = real_loop(*args, **kwargs)
        log["train_loop_processes"].append(res.n_processes)
        return res

    real_replace = os.replace
    writing: list = []  # the record path of the save in progress

    def watched_replace(src, dst, *args, **kwargs):
        # a write is this process renaming a finished file onto the record (results' atomic writes), not a
        # change of the file's time: another process writing the same record meanwhile is not this one's write
        out = real_replace(src, dst, *args, **kwargs)
        if writing and Path(dst) == writing[-1][0]:
            log["writes"].append(writing[-1][1])
        return out

    def watched_save(store, key, *args, **kwargs):
        writing.append((store.record_path(key), results.key_name(key)))
        try:
            return real_save(store, key, *args, **kwargs)
        finally:
            writing.pop()

    engine.train_loop = counted_loop  # dsalib.train imports it from the engine at call time
    results.ResultStore.save = watched_save
    os.replace = watched_replace
    try:
        cfg = EnhancementConfig(dataset="ess9", source="embedded", questions=[QUESTION], n=N, seeds=[SEED],
                                modes=["full"], methods=list(METHODS), model="tiny", phase1={**PHASE1, "lr": LR[strategy]},
                                phase2={**PHASE2, "lr": LR[strategy]}, strategy=strategy)
        lm = LanguageModel.load("tiny")
        run_enhancement(cfg, store_dir, lm=lm, progress=None)
        trained = [om for (_, kind), (om, _) in lm._option_models.items() if kind == strategy]
        log["fsdp"] = bool(trained) and all(om.fsdp for om in trained)
    finally:
        engine.train_loop, results.ResultStore.save, os.replace = real_loop, real_save, real_replace
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / f"rank{rank}.json").write_text(json.dumps(log))
    return log


def launch_two_processes(store_dir: Path, log_dir: Path, timeout: float = 600, strategy: str = "last_layer",
                         fsdp: bool = False) -> None:
    """``accelerate launch`` 2 CPU processes running :func:`fit`; raises with their output if they fail."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
                   ACCELERATE_CONFIG_FILE=str(Path(tmp) / "no-config.yaml"),
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        # --multi_gpu without GPUs starts torch.distributed processes on the CPU (gloo backend)
        # accelerate's default for --use_fsdp, cpu-RAM-efficient loading, is refused by the engine (it does not broadcast)
        mode = (["--use_fsdp", "--fsdp_version", "2", "--fsdp_cpu_ram_efficient_loading", "false"] if fsdp
                else ["--multi_gpu"])
        cmd = [sys.executable, "-m", "accelerate.commands.launch", *mode, "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "0", str(Path(__file__).resolve()), "--worker", str(store_dir), str(log_dir),
               strategy]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the 2-process run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def predictions(store_dir: Path):
    """The stored per-subgroup predictions of the methods, one row per (method, subgroup), sorted."""
    from dsalib.results import ResultStore

    per = ResultStore(store_dir).load_all_per_subgroup()
    per = per[per.method.isin(METHODS)]
    cols = [c for c in per.columns if c.startswith("pred_")]
    return per.sort_values(["method", "subgroup"], kind="stable")[["method", "subgroup"] + cols].reset_index(drop=True)


def measure(work_dir: str | Path | None = None, strategy: str = "last_layer", fsdp: bool = False) -> dict:
    """Run the 2-process and the 1-process fit and compare them (see the module docstring)."""
    import numpy as np

    from dsalib.results import ResultStore

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        start = time.perf_counter()
        launch_two_processes(work / "two", work / "two-logs", strategy=strategy, fsdp=fsdp)
        single = fit(work / "one", work / "one-logs", strategy)
        logs = [json.loads((work / "two-logs" / f"rank{r}.json").read_text()) for r in (0, 1)]
        two, one = predictions(work / "two"), predictions(work / "one")
        if len(two) == 0 or two[["method", "subgroup"]].values.tolist() != one[["method", "subgroup"]].values.tolist():
            raise RuntimeError(f"the runs stored different predictions: {len(two)} rows vs {len(one)} rows")
        cols = [c for c in one.columns if c.startswith("pred_")]
        diff = float(np.abs(two[cols].to_numpy() - one[cols].to_numpy()).max())
        writes = [w for log in logs for w in log["writes"]]
        alone = sum(p < log["world"] for log in logs for p in log["train_loop_processes"])
        store = ResultStore(work / "two")
        return {
            "accelerate_2proc_max_abs_diff": diff,
            "duplicate_fits": len(writes) - len(set(writes)) + alone,
            "records": len(store),
            "record_keys": sorted((k["question"], k["seed"], k["method"]) for k in store.keys()),
            "writes_per_process": [len(log["writes"]) for log in logs],
            "train_loop_runs": [len(log["train_loop_processes"]) for log in logs],
            "single_process_train_loop_runs": len(single["train_loop_processes"]),
            "strategy": strategy,
            "fsdp_processes": sum(bool(log.get("fsdp")) for log in logs),
            "seconds": round(time.perf_counter() - start, 1),
        }


if __name__ == "__main__":
    if len(sys.argv) in (4, 5) and sys.argv[1] == "--worker":
        fit(Path(sys.argv[2]), Path(sys.argv[3]), *sys.argv[4:5])
    else:
        import argparse

        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--strategy", choices=("last_layer", "lora", "full"), default="last_layer")
        parser.add_argument("--fsdp", action="store_true", help="shard the lora/full model with FSDP2")
        args = parser.parse_args()
        if args.fsdp and args.strategy == "last_layer":
            parser.error("--fsdp shards the lora and full strategies; add --strategy lora or --strategy full")
        print(json.dumps(measure(strategy=args.strategy, fsdp=args.fsdp)))
