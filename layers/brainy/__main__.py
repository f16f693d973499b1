"""`python -m brainy`: the same command line as the `brainy` script."""

from brainy.cli import main

raise SystemExit(main())
