"""Several processes under ``accelerate launch``: who this process is, and the few collective calls the library makes.

In a plain process (no ``WORLD_SIZE`` > 1 in the environment) every function
here is a cheap no-op: rank 0 of 1, the main process, values unchanged.
Under ``accelerate launch`` (or torchrun) the process group is joined through
:class:`accelerate.PartialState` (gloo on a machine without CUDA, NCCL with
it) the first time one of them is called.

Who uses what:

- :func:`dsalib.engine.train_loop` splits every batch over the processes and
  sums their gradients; :func:`dsalib.engine.predict_rows` and
  :meth:`dsalib.llm_methods.FineTuned.predict` split prediction passes with
  :func:`gather_shards`.
- :mod:`dsalib.results` writes only on the main process and makes every
  process agree on which results are pending (:func:`agreed`).
- Under an FSDP config (:func:`fsdp_launched`) the ``lora``/``full``
  :class:`dsalib.engine.OptionModel` shards its model over the processes;
  every forward pass is then collective, and the engine keeps the processes
  in step with :func:`largest`.

Collective calls (:func:`agreed`, :func:`gather_shards`) must be made by every
process, in the same order.
"""

from __future__ import annotations

import os


def _launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def state():
    """accelerate's shared process state (joins the process group on first use); ``None`` in a plain process."""
    if not _launched():
        return None
    import torch
    from accelerate import PartialState

    # without cpu=True accelerate ignores a CPU-only launch (it reports 1 process on each)
    return PartialState(cpu=not torch.cuda.is_available())


def process_share() -> tuple[int, int]:
    """``(rank, world)``: this process's index and the number of processes; ``(0, 1)`` in a plain process."""
    s = state()
    return (0, 1) if s is None else (s.process_index, s.num_processes)


def is_main_process() -> bool:
    """Whether this process is the main one (always, in a plain process)."""
    return process_share()[0] == 0


def env_flag(name: str, default: bool) -> bool:
    """A true/false setting that ``accelerate launch`` passes in the environment (``1``/``true``/``yes`` are true)."""
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes")


def fsdp_launched() -> bool:
    """Whether ``accelerate launch`` started this process with an FSDP config, with more than one process.

    accelerate's launcher sets ``ACCELERATE_USE_FSDP=true`` for ``distributed_type: FSDP`` (or
    ``--use_fsdp``), on GPUs and on CPUs alike.
    """
    return env_flag("ACCELERATE_USE_FSDP", False) and process_share()[1] > 1


def largest(value: int) -> int:
    """The largest of the processes' ``value`` (whole numbers), on every process (``value`` in a plain process).
    Collective."""
    if process_share()[1] == 1:
        return int(value)
    import torch
    import torch.distributed as dist

    t = torch.tensor([int(value)], dtype=torch.int64, device=state().device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def gathered(value) -> list:
    """Every process's ``value`` (picklable), in rank order, on every process (``[value]`` in a plain process).
    Collective."""
    if process_share()[1] == 1:
        return [value]
    from accelerate.utils import gather_object

    return list(gather_object([value]))


def agreed(value):
    """``value`` as the main process has it, on every process (unchanged in a plain process). Collective."""
    if process_share()[1] == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def gather_shards(local, n: int):
    """All ``n`` rows (a tensor) on every process, when process ``r`` holds rows ``r::world`` as ``local``.

    The inverse of taking ``items[rank::world]``: every process passes its
    share (same trailing shape and dtype everywhere) and gets the rows back in
    their original order.  A single process gets ``local`` back.  Collective.
    """
    rank, world = process_share()
    if world == 1:
        return local
    import torch.distributed as dist

    from .errors import DsaError

    expected = len(range(rank, n, world))
    if local.shape[0] != expected:
        raise DsaError(f"process {rank} of {world} holds {local.shape[0]} rows of {n}; expected {expected}")
    size = -(-n // world)  # ceil: the largest share
    padded = local.new_zeros((size,) + tuple(local.shape[1:]))
    padded[:expected] = local
    parts = [padded.new_empty(padded.shape) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    out = local.new_zeros((n,) + tuple(local.shape[1:]))
    for r, part in enumerate(parts):
        out[r::world] = part[: len(range(r, n, world))]
    return out
