"""``python -m reduction`` runs the sweep CLI."""

from reduction.cli import main

raise SystemExit(main())
