"""Progress bars that never print warnings into notebooks.

``tqdm.auto`` inside a Jupyter kernel without ``ipywidgets`` emits
``TqdmWarning: IProgress not found`` (with the interpreter's absolute path) into
every executed notebook. :func:`bar` picks the bar for where the code runs:

- a Jupyter kernel with ``ipywidgets``: the widget bar (``tqdm.notebook``);
- a terminal (``sys.stderr`` is a TTY): the text bar (``tqdm.std``);
- anything else (papermill, a kernel without widgets, logs, CI): no bar at all.

Use it like ``tqdm``: ``for x in bar(items, desc="...", enabled=progress): ...``.
"""

from __future__ import annotations

import sys
from typing import Iterable


def _in_kernel() -> bool:
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # noqa: BLE001 - an odd IPython state means "not a kernel"
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _widgets_available() -> bool:
    try:
        from tqdm.notebook import IProgress  # None when ipywidgets is missing or too old
    except ImportError:
        return False
    return IProgress is not None


def bar_class():
    """The tqdm class for this process (see the module docstring), or ``None`` when no bar should show."""
    if _in_kernel():
        if _widgets_available():
            from tqdm.notebook import tqdm

            return tqdm
        return None
    if getattr(sys.stderr, "isatty", lambda: False)():
        from tqdm.std import tqdm

        return tqdm
    return None


def bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs):
    """A tqdm progress bar over ``iterable`` where one can show; otherwise a disabled one (no output).

    ``kwargs`` go to tqdm (``desc``, ``total``, ``leave`` ...). ``enabled=False`` or a true ``disable``
    always gives no output; tqdm's ``disable=None`` (off when not a terminal) is what :func:`bar_class` does anyway.
    """
    if kwargs.pop("disable", None):
        enabled = False
    cls = bar_class() if enabled else None
    if cls is None:
        from tqdm.std import tqdm

        return tqdm(iterable, disable=True, **kwargs)
    return cls(iterable, **kwargs)


def import_tqdm_auto_quietly() -> None:
    """Import ``tqdm.auto`` once with its "IProgress not found" warning silenced.

    transformers, huggingface_hub and accelerate import ``tqdm.auto`` at import time; in a
    kernel without ``ipywidgets`` that prints a ``TqdmWarning`` with the interpreter's path
    into the executed notebook. dsalib shows no bar there anyway (:func:`bar`), so the
    warning says nothing; ``dsalib/__init__.py`` calls this first. Other warnings still show.
    """
    import warnings

    from tqdm import TqdmWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)
        import tqdm.auto  # noqa: F401 (the quiet import)
