"""``python -m deepnet train ...``."""

from .cli import main

raise SystemExit(main())
