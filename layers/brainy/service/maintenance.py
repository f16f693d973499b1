"""One maintenance pass over a collection, as the compactor function and
`brainy compact` run it: sweep and compact (under the lease), collect garbage
past retention, then verify — and repair what verify finds."""

from __future__ import annotations

from typing import Any

from brainy.maintenance.compaction import compact
from brainy.maintenance.context import Maintenance, Progress
from brainy.maintenance.gc import collect_garbage
from brainy.maintenance.repair import repair
from brainy.maintenance.verify import verify


def maintain(
    ctx: Maintenance,
    collection: str,
    *,
    force: bool = False,
    deep: bool = False,
    progress: Progress | None = None,
) -> dict:
    """Compact, collect garbage and verify `collection`; returns a JSON-able report.

    Args:
        ctx: what maintenance works with (a read-write instance's `maintenance`).
        collection: the collection.
        force: compact below the policy's thresholds.
        deep: verify by downloading and hashing every segment (else headers only).
        progress: told how far each step is (a terminal's progress bars).
    """
    ctx.require_schema(collection)
    report: dict[str, Any] = {"collection": collection}
    report["compaction"] = compact(ctx, collection, force=force, progress=progress).to_dict()
    report["gc"] = collect_garbage(
        ctx.store, collection, ctx.settings, cache=ctx.versions, progress=progress
    ).to_dict()
    checked = verify(ctx.store, collection, deep=deep, progress=progress)
    if not checked.ok:
        report["repair"] = repair(ctx, collection, checked).to_dict()
        checked = verify(ctx.store, collection, deep=deep)
    report["verify"] = checked.to_dict()
    return report
