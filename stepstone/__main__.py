"""`python -m stepstone`: the same as the `stepstone` command."""

from __future__ import annotations

from stepstone.cli import main

raise SystemExit(main())
