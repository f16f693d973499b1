"""What a `brainy` subcommand is built from: `add_command`, the `--store` option and
the argument types every command shares. The CLI's parser table and the modules
that bring their own subcommands (dev, relay, config, the sources) all use these,
so none of them imports the CLI back.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from brainy.core.config import Settings

# The embedded local folder: the store a command (and `brainy.connect`) uses when
# neither `--store` nor `$BRAINY_STORE` names one.
DEFAULT_STORE = Settings.store

Subparsers = Any  # argparse's _SubParsersAction is private
Handler = Callable[[argparse.Namespace, Any], int]  # (arguments, cli.Session) -> status

_STORE_HELP = f"storage URL (default: $BRAINY_STORE, else {DEFAULT_STORE})"


def store_option(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--store", metavar="URL", default=default, help=_STORE_HELP)


def add_command(
    sub: Subparsers, name: str, help: str, run: Handler | None = None
) -> argparse.ArgumentParser:
    """Add a subcommand whose handler is `run` (None for a group of subcommands);
    `--store` is accepted after the subcommand too."""
    parser = sub.add_parser(name, help=help, description=help)
    store_option(parser, argparse.SUPPRESS)
    if run is not None:
        parser.set_defaults(run=run)
    return parser


def positive_int(value: str) -> int:
    """An argument type: an integer of at least 1."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n
