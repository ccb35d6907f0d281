"""The Jupyter kernel the study notebooks run in.

Every notebook's metadata names the kernel ``dsa`` (display name "Python 3
(dsa)"), so running the studies never depends on, or overwrites, a user's own
``python3`` kernel.  ``make setup`` installs that kernelspec for the project's
venv (``ipykernel install --user --name dsa``) for Jupyter and hand-run
papermill.  The ``dsa`` command line and ``scripts/run_outputs.py`` do not need
it: they run notebooks under :func:`private_kernel`, which makes the name
resolve to the interpreter running them through a temporary kernelspec put
first on ``JUPYTER_PATH``, so a fresh machine works with nothing installed
globally.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

#: The kernel name in every notebook's metadata (``notebooks/*.ipynb`` and the jupytext headers).
KERNEL_NAME = "dsa"
#: Its display name in Jupyter's kernel list.
KERNEL_DISPLAY_NAME = "Python 3 (dsa)"


def kernel_spec(python: str | None = None) -> dict:
    """A kernelspec (``kernel.json`` content) that starts ``python`` (default: this interpreter) as an IPython kernel."""
    return {
        "argv": [python or sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": KERNEL_DISPLAY_NAME,
        "language": "python",
        "metadata": {"debugger": False},
    }


@contextlib.contextmanager
def private_kernel(name: str = KERNEL_NAME):
    """Make kernel ``name`` resolve to this interpreter while the block runs.

    Writes a kernelspec into a temporary folder and puts that folder first on
    ``JUPYTER_PATH`` (restored afterwards), so it wins over any user or system
    kernel of the same name. Yields the kernel name to pass to papermill.
    """
    with tempfile.TemporaryDirectory(prefix="dsa-kernel-") as tmp:
        spec_dir = Path(tmp) / "kernels" / name
        spec_dir.mkdir(parents=True)
        (spec_dir / "kernel.json").write_text(json.dumps(kernel_spec(), indent=1), encoding="utf-8")
        old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = tmp + (os.pathsep + old if old else "")
        try:
            yield name
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old
