"""The set-up every study notebook runs first, and where a run's tables go.

:func:`prepare` is the preamble of a study notebook after its configuration
(:mod:`dsalib.config`) is built: it loads the survey, checks the questions,
the background attributes and that every background level has respondents,
opens the run's output folder and resolves the store root, and gives the
one-line description of the data the notebook prints.

Output folders (:func:`output_dir_for`):

- ``output_dir`` given (``scripts/run_outputs.py`` passes
  ``outputs/<study>/<parameter file>``, the committed reference runs): that folder;
- otherwise ``runs/<study>/<dataset>/`` (``runs/theorem/default/``), which git
  ignores, so an ad-hoc run (``papermill notebooks/enhancement.ipynb out.ipynb
  -p dataset gss2018``) never rewrites the committed ``outputs/``.

A run's tables are written into a hidden temporary folder beside the target
(``.<name>.tmp-<random>``) and swapped in as a set by
:meth:`OutputFolder.commit` at the end of the notebook: the old folder is
renamed away, the new one renamed in, then the old one deleted.  A run killed
before the swap leaves the previous tables untouched; leftovers are cleaned
(or an interrupted swap is rolled back) when the next run opens the folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from . import surveys
from .config import GenerationConfig, StudyConfig, TheoremConfig
from .results import resolve_output_dir
from .stores import slug

#: The git-ignored folder of ad-hoc runs (relative to the repository root).
RUNS_DIR = "runs"


def output_dir_for(cfg: StudyConfig) -> str:
    """The run's output folder: ``cfg.output_dir`` when given, else ``runs/<study>/<dataset>`` (see the module docstring)."""
    if cfg.output_dir is not None:
        if not str(cfg.output_dir).strip():
            from .errors import ParameterError

            raise ParameterError(f"parameter 'output_dir' of the {cfg.study} study must be a non-empty path or None")
        return str(cfg.output_dir)
    dataset = getattr(cfg, "dataset", None)
    name = "default" if dataset is None else slug(Path(dataset).stem if dataset.endswith((".yaml", ".yml"))
                                                  else dataset)
    return f"{RUNS_DIR}/{cfg.study}/{name}"


class OutputFolder:
    """A run's tables: written under :attr:`path` (temporary), swapped in at :attr:`final` by :meth:`commit`.

    ``out / "results.csv"`` is a path in the temporary folder.  ``keep``:
    sub-folders of the previous folder carried over at the swap (``stores``:
    result stores kept in the output folder when ``store_root`` is None).
    """

    def __init__(self, final: str | os.PathLike, keep: Sequence[str] = ("stores",)):
        self.final = resolve_output_dir(final)
        self.keep = tuple(keep)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.clean()
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.tmp-", dir=self.final.parent))
        self.committed = False

    def __truediv__(self, name) -> Path:
        return self.path / name

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"OutputFolder({str(self.final)!r}, committed={self.committed})"

    @property
    def shown(self) -> str:
        """The final folder as the notebook shows it: relative to the repository root when under it."""
        from .results import _repo_root

        root = _repo_root()
        return str(self.final.relative_to(root)) if self.final.is_relative_to(root) else str(self.final)

    def _leftovers(self, kind: str) -> list[Path]:
        return sorted(self.final.parent.glob(f".{self.final.name}.{kind}-*"), key=lambda p: p.stat().st_mtime)

    def clean(self) -> None:
        """Roll back a swap that was interrupted between its two renames, and delete leftover temporary folders."""
        old = self._leftovers("old")
        if old and not self.final.exists():
            os.replace(old.pop(), self.final)  # the newest previous folder was renamed away but nothing came in
        for p in old + self._leftovers("tmp"):
            shutil.rmtree(p, ignore_errors=True)

    def commit(self) -> Path:
        """Swap the run's tables in as a set; returns the final folder."""
        if self.committed:
            return self.final
        old = None
        if self.final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.old-", dir=self.final.parent))
            old.rmdir()
            os.replace(self.final, old)
            for k in self.keep:
                if (old / k).exists() and not (self.path / k).exists():
                    os.replace(old / k, self.path / k)
        os.replace(self.path, self.final)
        self.path = self.final
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final


@dataclass
class Prepared:
    """What :func:`prepare` set up: the survey, the checked questions and attributes, the output folder, the store root."""

    cfg: StudyConfig
    survey: surveys.Survey
    questions: list
    attributes: tuple
    out: OutputFolder
    store_root: str
    checked_questions: list = field(default_factory=list)

    def data_line(self, *details: str) -> str:
        """The notebook's one-line description of the data (Markdown), with ``details`` appended."""
        s = self.survey
        parts = [f"**Data:** `{s.name}` from {s.source_name}, {s.n_respondents:,} respondents; "
                 f"background {', '.join(self.attributes)}; questions {', '.join(self.questions)}"]
        return "; ".join(parts + [d for d in details if d]) + "."


def prepare(cfg: StudyConfig, more_questions: Iterable[Sequence[str] | None] = ()) -> Prepared:
    """Load the survey and check everything that needs the data, open the output folder, resolve the store root.

    ``more_questions``: further question lists of the study (e.g. the
    robustness study's ``prompt_questions``), checked too.  Generation
    studies check their training and test questions.
    """
    if isinstance(cfg, TheoremConfig):
        from .errors import ParameterError

        raise ParameterError("the theorem study uses no survey; open its folder with OutputFolder(output_dir_for(cfg))")
    wanted = (list(cfg.train_questions) + list(cfg.test_questions) if isinstance(cfg, GenerationConfig)
              else cfg.questions)
    more_questions = list(more_questions)  # (None in it means the study's own questions)
    if wanted is not None:  # only what the run uses must be in the file (the rest is reported as unavailable)
        wanted = list(dict.fromkeys(list(wanted) + [q for e in more_questions if e is not None for q in e]))
    from .methods import uses_other_questions

    if uses_other_questions(getattr(cfg, "methods", ())):  # e.g. Stacked-MNL, XQ: the survey's other questions too
        wanted = None
    survey = surveys.load_survey(cfg.dataset, data_dir=cfg.data_dir, source=cfg.source, questions=wanted,
                                 background=cfg.background)
    if isinstance(cfg, GenerationConfig):
        qs = surveys.iter_questions(survey, list(cfg.train_questions) + list(cfg.test_questions))
    else:
        qs = surveys.iter_questions(survey, cfg.questions)
    attrs = survey.check_background(cfg.background)
    checked = list(qs)
    for extra in more_questions:
        if extra is not None:
            checked += surveys.iter_questions(survey, extra)
    checked = list(dict.fromkeys(checked))
    if not isinstance(cfg, GenerationConfig):  # generation.make_split checks its populations and sizes
        for q in checked:
            surveys.check_levels_populated(survey, q, attrs)
    out = OutputFolder(output_dir_for(cfg))
    store_root = cfg.store_root or str(out.final / "stores")
    return Prepared(cfg, survey, qs, attrs, out, store_root, checked)
