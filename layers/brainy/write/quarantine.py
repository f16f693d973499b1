"""Quarantine: where a corrupt batch goes, so its event is acknowledged once and
not redelivered forever, and an operator can still inspect it."""

from __future__ import annotations

import json
import logging
import time

from brainy.storage import NotFound, ObjectStore

log = logging.getLogger(__name__)

QUARANTINE = "quarantine"


def quarantine_key(key: str) -> str:
    """`<collection>/wal/...` → `<collection>/quarantine/wal/...`."""
    collection, _, rest = key.partition("/")
    return f"{collection}/{QUARANTINE}/{rest}"


def quarantine(store: ObjectStore, key: str, reason: str) -> str | None:
    """Move `key` under the quarantine prefix with a note of why; returns the new key,
    or None if the object is already gone."""
    target = quarantine_key(key)
    try:
        data = store.get(key).data
    except NotFound:
        return None
    store.put(target, data)
    note = {"key": key, "reason": reason, "quarantined_at": time.time()}
    store.put(f"{target}.reason.json", json.dumps(note).encode())
    store.delete(key)
    log.error("quarantined %s: %s", key, reason)
    return target
