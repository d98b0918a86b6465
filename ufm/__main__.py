"""`python -m ufm ...` entry point."""

from .cli import main

raise SystemExit(main())
