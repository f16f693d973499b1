"""`python -m brainy`: the same command line as the `brainy` script."""

from brainy.entry.cli import main

raise SystemExit(main())
