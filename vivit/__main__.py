"""``python -m vivit`` runs the ``vivit`` command."""

import sys

from .cli import main

sys.exit(main())
