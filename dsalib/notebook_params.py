"""Parameters of the study notebooks: which names a notebook declares, and the check of what it was given.

A study notebook ``notebooks/<study>.ipynb`` declares its settings in its one
cell tagged ``parameters``; papermill injects overrides in a cell after it.
A misspelt override (``-p seeds_ [0]``) would otherwise be silently ignored,
so each notebook calls :func:`given_parameters` right after the injected cell:

.. code-block:: python

    _names_before_parameters = set(globals())   # last line of the cell before the parameters
    # ... parameters cell ...
    params = notebook_params.given_parameters("enhancement", globals(), _names_before_parameters)

The declared names are read from the notebook's own parameters cell (the
single source of truth); an unknown name raises
:class:`~dsalib.errors.ParameterError` at the top of the notebook.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

from .errors import ParameterError

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def declared_parameters(study: str, notebooks: str | Path = NOTEBOOKS) -> list[str]:
    """Names assigned at the top level of the ``parameters`` cell of ``notebooks/<study>.ipynb``."""
    return list(declared_defaults(study, notebooks))


def declared_defaults(study: str, notebooks: str | Path = NOTEBOOKS) -> dict:
    """The ``parameters`` cell's names and default values (a default that is not a literal is ``...``)."""
    path = Path(notebooks) / f"{study}.ipynb"
    if not path.exists():
        raise ParameterError(f"no notebook {path}; studies are {sorted(p.stem for p in Path(notebooks).glob('*.ipynb'))}")
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ParameterError(f"{path.name} must have exactly one cell tagged 'parameters', has {len(cells)}")
    source = "".join(cells[0]["source"]) if isinstance(cells[0]["source"], list) else cells[0]["source"]
    defaults = {}
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for t in targets:
            if isinstance(t, ast.Name):
                try:
                    defaults[t.id] = ast.literal_eval(node.value)
                except (ValueError, SyntaxError):
                    defaults[t.id] = ...
    return defaults


def given_parameters(study: str, namespace: dict, before: set, notebooks: str | Path = NOTEBOOKS) -> dict:
    """The parameters a run was given (declared and injected), checked: an unknown name is an error."""
    defaults = declared_defaults(study, notebooks)
    declared = list(defaults)
    given = {k: namespace[k] for k in namespace if k not in before and not k.startswith("_")}
    for k, v in given.items():
        if isinstance(defaults.get(k), (list, tuple, dict)) and isinstance(v, str):
            kind = "a mapping" if isinstance(defaults[k], dict) else "a list"
            raise ParameterError(
                f"parameter {k!r} of the {study} notebook must be {kind}, got the text {v!r}; papermill's -p passes "
                f"text: use -y \"{k}: {v}\" or a parameter file (-f)")
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ParameterError(f"unknown parameter(s) {unknown} for the {study} notebook; "
                             f"it declares {sorted(declared)} (check the spelling in the parameter file or -p option)")
    missing = sorted(set(declared) - set(given))
    if missing:
        raise ParameterError(f"parameter(s) {missing} of the {study} notebook are not defined")
    return {k: given[k] for k in declared}
