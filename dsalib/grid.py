"""The experiment grid on a cluster engine: one job per (dataset, question), with submitit.

The paper's grid is datasets × questions × seeds × methods.  Run in one
sequential loop it leaves a GPU idle while the statistical baselines fit, and
a CPU idle while the model trains.  Here the grid is cut into *units*:

- a **GPU unit** is one (dataset, question) with every seed and every method
  that needs the language model, so each prompt's frozen prefix is computed
  once per job and reused by every seed and method (in memory, and through the
  on-disk prefix cache by later jobs);
- a **CPU unit** is the same (dataset, question) with the statistical methods
  (TS, MNL, POLR, EB-MNL) and the noise floor.

Units are submitted as two job arrays through `submitit
<https://github.com/facebookincubator/submitit>`_: ``cluster="slurm"`` gives
Slurm job arrays (GPU and CPU partitions set apart), ``cluster="local"`` runs
the jobs as processes on this machine (:class:`submitit.LocalExecutor`), and
``cluster="debug"`` runs them in this process.  Every job writes into the
shared result stores of its configuration (:func:`dsalib.experiments.run_enhancement`
with ``store_root``): records are written atomically and keyed by the
configuration, so jobs never clobber each other, and resubmitting the grid
recomputes nothing that is finished (each unit reports how many results it
computed; a resume pass reports 0).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from . import methods as method_registry
from .errors import ParameterError

#: Executors submitit offers (``AutoExecutor(cluster=...)``).
CLUSTERS = ("slurm", "local", "debug")
#: What a job array of each kind asks for by default (override with ``gpu_parameters`` / ``cpu_parameters``).
DEFAULT_GPU_PARAMETERS = {"timeout_min": 240, "gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 64}
DEFAULT_CPU_PARAMETERS = {"timeout_min": 240, "cpus_per_task": 2, "mem_gb": 16}


@dataclass(frozen=True)
class Unit:
    """One job: a dataset's question, with the methods of one kind (``gpu`` or ``cpu``)."""

    dataset: str
    question: str
    kind: str
    methods: tuple[str, ...]
    floor: bool = True  # whether this unit computes the noise floor (the CPU unit, or a GPU unit without one)

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.dataset}:{self.question}"


def split_methods(names: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(gpu, cpu)``: the methods that need the language model, and the statistical ones."""
    names = tuple(dict.fromkeys(names))
    return (tuple(m for m in names if method_registry.needs_model(m)),
            tuple(m for m in names if not method_registry.needs_model(m)))


def plan(cfg, questions: Sequence[str] | None = None) -> list[Unit]:
    """The units of one Enhancement configuration (:class:`dsalib.experiments.EnhancementConfig`).

    Every question of ``cfg`` (or of the dataset) gets a CPU unit (its
    statistical methods and the noise floor) when ``cfg`` has statistical
    methods, and a GPU unit when it has methods that need the model (the GPU
    unit computes the floor when there is no CPU unit).  The dataset is loaded once to resolve the
    questions, so a bad dataset or question fails here, before anything is
    submitted.
    """
    from . import surveys

    gpu, cpu = split_methods(cfg.methods)
    if questions is None:
        survey = surveys.load_survey(cfg.dataset, data_dir=cfg.data_dir, source=cfg.source, questions=cfg.questions,
                                     background=cfg.background)
        questions = surveys.iter_questions(survey, cfg.questions)
    units = []
    for q in questions:
        if cpu:
            units.append(Unit(cfg.dataset, q, "cpu", cpu))
        if gpu:
            units.append(Unit(cfg.dataset, q, "gpu", gpu, floor=not cpu))
    return units


def unit_config(cfg, unit: Unit):
    """``cfg`` restricted to one unit: its question and its methods."""
    return dataclasses.replace(cfg, questions=[unit.question], methods=list(unit.methods))


def run_unit(cfg, unit: Unit, modes: Sequence[str] | None = None, store_root: str | Path | None = None,
             lm_kwargs: Mapping | None = None) -> dict:
    """Run one unit into the shared stores; returns how many results it computed.

    The unit with ``floor`` also computes the noise floor (one unit per
    question has it, so the two arrays never write the same key).  Results already in the store are skipped.
    """
    from . import experiments
    from .results import ResultStore

    modes = list(modes if modes is not None else cfg.modes)
    store_root = store_root if store_root is not None else (cfg.store_root or experiments.DEFAULT_STORE_ROOT)
    sub = unit_config(cfg, unit)
    stores = [ResultStore(experiments.store_dir_for(sub, m, store_root)) for m in modes]
    mine = set(unit.methods) | ({"floor"} if unit.floor else set())

    def count() -> int:  # this unit's records only: other jobs write into the same stores meanwhile
        return sum(k.get("question") == unit.question and k.get("method") in mine for s in stores for k in s.keys())

    before = count()
    lm = None
    if unit.kind == "gpu":
        from .llm_methods import LanguageModel

        lm = LanguageModel.from_config(cfg, **dict(lm_kwargs or {}))
    experiments.run_enhancement(sub, lm=lm, modes=list(modes), store_root=store_root, floor=unit.floor)
    return {"unit": unit.name, "computed": count() - before}


def make_executor(kind: str, cluster: str, folder: str | Path, parameters: Mapping | None = None):
    """A submitit executor for one array (``kind`` ``gpu`` or ``cpu``) with its resource parameters."""
    import submitit

    if cluster not in CLUSTERS:
        raise ParameterError(f"cluster must be one of {CLUSTERS}, got {cluster!r}")
    params = dict(DEFAULT_GPU_PARAMETERS if kind == "gpu" else DEFAULT_CPU_PARAMETERS)
    params.update(parameters or {})
    if cluster != "slurm":  # gpus/partitions mean nothing to a local process
        params = {k: v for k, v in params.items() if k in ("timeout_min",)}
    executor = submitit.AutoExecutor(folder=Path(folder) / kind, cluster=cluster)
    executor.update_parameters(name=f"dsa-{kind}", **params)
    return executor


def submit(cfg, folder: str | Path, cluster: str = "slurm", gpu_parameters: Mapping | None = None,
           cpu_parameters: Mapping | None = None, modes: Sequence[str] | None = None,
           store_root: str | Path | None = None, lm_kwargs: Mapping | None = None,
           units: Sequence[Unit] | None = None) -> list:
    """Submit the grid of ``cfg`` as a CPU array and a GPU array; returns the submitit jobs.

    ``modes`` and ``store_root`` default to the configuration's (``cfg.modes``,
    ``cfg.store_root``); ``folder`` holds submitit's logs and pickles.

    ``gpu_parameters`` / ``cpu_parameters`` are submitit's executor parameters
    (``slurm_partition``, ``timeout_min``, ``gpus_per_node``, ``cpus_per_task``,
    ``mem_gb``, ``slurm_array_parallelism``, ``slurm_additional_parameters``, ...).
    """
    from .experiments import DEFAULT_STORE_ROOT

    units = list(units if units is not None else plan(cfg))
    modes = list(dict.fromkeys(modes if modes is not None else cfg.modes))
    store_root = str(store_root if store_root is not None else (cfg.store_root or DEFAULT_STORE_ROOT))
    if not modes:
        raise ParameterError("modes must name at least one truth mode")
    jobs = []
    for kind, params in (("cpu", cpu_parameters), ("gpu", gpu_parameters)):
        mine = [u for u in units if u.kind == kind]
        if not mine:
            continue
        executor = make_executor(kind, cluster, folder, params)
        n = len(mine)
        jobs += executor.map_array(run_unit, [cfg] * n, mine, [modes] * n, [store_root] * n,
                                   [dict(lm_kwargs or {})] * n)
    return jobs


def wait(jobs) -> list[dict]:
    """Block until every job is done; their results (``{"unit", "computed"}``), in submission order."""
    return [job.result() for job in jobs]
