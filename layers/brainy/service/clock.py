"""How far a writing instance's clock is from the object store's.

Records resolve last-writer-wins by their writer's timestamp. A writer whose clock
runs ahead stamps records that outrank every honest delete until real time catches
up; one whose clock runs behind has its writes lose to older ones. So a writing
instance measures its clock against the store's at start-up and every
`clock_check_interval`, and refuses to write while they are further apart than
`max_clock_skew`.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from brainy.core.errors import ClockSkewed
from brainy.storage import ObjectStore, StorageError


class ClockCheck:
    """The last measured skew of one instance's clock, measured again when due.

    Args:
        store: the store whose clock is the reference; must be writable.
        probe_key: where probe objects go (a unique suffix is added per probe).
        max_skew: seconds of skew, either way, beyond which writes are refused.
        interval: seconds a measurement stays current.
    """

    def __init__(
        self,
        store: ObjectStore,
        probe_key: str,
        max_skew: float,
        interval: float,
    ) -> None:
        self.store = store
        self.probe_key = probe_key
        self.max_skew = max_skew
        self.interval = interval
        self._skew: float | None = None
        self._measured_at = 0.0
        # One probe at a time: concurrent writers that find it due wait for it
        # rather than each sending their own.
        self._lock = threading.Lock()

    def last_measured(self) -> float:
        """The last measured skew in seconds (local minus store), NaN before the first."""
        return math.nan if self._skew is None else self._skew

    def skew(self) -> float:
        """The skew in seconds, measured again if the last measurement is older
        than `interval`.

        Raises:
            StorageError: the probe failed.
        """
        with self._lock:
            if self._skew is None or time.monotonic() - self._measured_at >= self.interval:
                self._skew = self.store.measure_clock_skew(self.probe_key)
                self._measured_at = time.monotonic()
            return self._skew

    def require_within_bounds(self) -> None:
        """Call before writing anything stamped with the local clock.

        Raises:
            ClockSkewed: the clock is further than `max_skew` from the store's.
            StorageError: the probe failed.
        """
        skew = self.skew()
        if abs(skew) > self.max_skew:
            raise ClockSkewed(skew, self.max_skew)

    def health(self) -> dict[str, Any]:
        """The `clock` check of `GET /health`."""
        try:
            skew = self.skew()
        except StorageError as e:
            return {"ok": False, "error": f"measuring clock skew: {type(e).__name__}: {e}"}
        return {
            "ok": abs(skew) <= self.max_skew,
            "skew_s": round(skew, 3),
            "max_skew_s": self.max_skew,
        }
