"""``python -m deepcollapse ...`` = the ``deepcollapse`` command."""

from deepcollapse.cli import main

raise SystemExit(main())
