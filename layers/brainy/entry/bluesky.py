"""`brainy source bluesky`: Bluesky posts from Jetstream into a collection."""

from __future__ import annotations

import argparse
from typing import Any

from brainy.entry.sources import SourceContext, add_source_command, run_source
from brainy.write.sources.bluesky import DEFAULT_JETSTREAM, JetstreamReader


def bluesky_command(sub: Any) -> None:
    p = add_source_command(
        sub, "bluesky", "write Bluesky posts from Jetstream into a collection", _run,
        batch_size=10_000, flush_interval=5.0,
    )  # fmt: skip
    p.add_argument("--jetstream", metavar="URL", default=DEFAULT_JETSTREAM,
                   help=f"Jetstream's subscribe URL (default {DEFAULT_JETSTREAM})")  # fmt: skip


def _run(args: argparse.Namespace, session: Any) -> int:
    def read(ctx: SourceContext) -> None:
        start = None if ctx.start is None else ctx.start.position
        JetstreamReader(args.jetstream, ctx.writer, ctx.stats, start).read(
            ctx.stopping, ctx.on_stop
        )

    return run_source(session.app, "bluesky", args, read, env=session.env)
