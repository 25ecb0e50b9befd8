"""``python -m vivit`` runs the ``vivit`` command."""

import sys

from vivit.cli import main

sys.exit(main())
