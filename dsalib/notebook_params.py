"""The parameters cell of a study notebook: which names it declares and their default values.

A study notebook ``notebooks/<study>.ipynb`` declares its settings in its one
cell tagged ``parameters`` (papermill injects overrides in a cell after it).
The settings themselves are the fields of the study's configuration class in
:mod:`dsalib.config`, which checks them (:func:`dsalib.config.from_notebook`);
``tests/test_notebook_params.py`` checks that every parameters cell declares
exactly those fields with the same defaults.
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
