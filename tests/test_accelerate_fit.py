"""The Enhancement driver under `accelerate launch` with 2 CPU processes: shared fits, one writer, same predictions."""

import importlib.util
from pathlib import Path

import pytest

CHECK = Path(__file__).resolve().parent.parent / "benchmarks" / "accelerate_check.py"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _check_module():
    spec = importlib.util.spec_from_file_location("accelerate_check", CHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_processes_fit_tkft_and_dsa_once_and_match_one_process(tmp_path):
    out = _check_module().measure(tmp_path)
    # predictions equal a single process up to rounding
    assert out["accelerate_2proc_max_abs_diff"] < 1e-4, out
    # one record per (question, seed, method), written by the main process only, and every fit shared
    assert [tuple(k) for k in out["record_keys"]] == [("imbgeco", 0, "DSA"), ("imbgeco", 0, "TKFT"), ("imbgeco", 0, "floor")], out
    assert out["records"] == 3 and out["writes_per_process"] == [3, 0], out
    assert out["duplicate_fits"] == 0, out
    # both processes took part in the same training runs as the single process ran
    assert out["train_loop_runs"][0] == out["train_loop_runs"][1] == out["single_process_train_loop_runs"] >= 3, out
