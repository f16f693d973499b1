"""One maintenance pass over a collection, as the compactor function and
`brainy compact` run it: sweep and compact (under the lease), collect garbage
past retention, then verify — and repair what verify finds."""

from __future__ import annotations

from typing import Any

from brainy.maintenance.compaction import compact
from brainy.maintenance.gc import collect_garbage
from brainy.maintenance.verify import repair, verify


def maintain(app: Any, collection: str, *, force: bool = False, deep: bool = False) -> dict:
    """Compact, collect garbage and verify `collection`; returns a JSON-able report.

    Args:
        app: a read-write `Brainy` instance.
        collection: the collection.
        force: compact below the policy's thresholds.
        deep: verify by downloading and hashing every segment (else headers only).
    """
    app.require_schema(collection)
    report: dict[str, Any] = {"collection": collection}
    report["compaction"] = compact(app, collection, force=force).to_dict()
    report["gc"] = collect_garbage(app.store, collection, app.settings).to_dict()
    checked = verify(app.store, collection, deep=deep)
    if not checked.ok:
        report["repair"] = repair(app, collection, checked).to_dict()
        checked = verify(app.store, collection, deep=deep)
    report["verify"] = checked.to_dict()
    return report
