"""``python -m dsalib`` is the ``dsa`` command line (:mod:`dsalib.cli`)."""

import sys

from .cli import main

sys.exit(main())
