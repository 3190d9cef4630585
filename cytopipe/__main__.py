"""``python -m cytopipe`` is the ``cytopipe`` command."""

import sys

from .cli import main

sys.exit(main())
