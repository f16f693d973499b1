"""Errors a user can cause. Each names the field at fault and why; `status` is the
HTTP status a function answers it with."""

from __future__ import annotations

import json
from typing import Any


class BrainyError(Exception):
    status = 400
    code = "invalid"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def to_dict(self) -> dict[str, Any]:
        return error_body(self.code, self.field, self.reason)


def error_body(code: str, field: str, reason: str) -> dict[str, Any]:
    """The JSON every error answer carries: what went wrong, on which field, and why."""
    return {"error": {"code": code, "field": field, "reason": reason,
                      "message": f"{field}: {reason}"}}  # fmt: skip


class InvalidInput(BrainyError):
    status = 400
    code = "invalid"


class UnknownCollection(BrainyError):
    status = 404
    code = "unknown_collection"

    def __init__(self, name: str) -> None:
        super().__init__("collection", f"unknown collection {name!r}")


class PayloadTooLarge(BrainyError):
    status = 413
    code = "too_large"


class IdempotencyConflict(BrainyError):
    status = 422
    code = "idempotency_conflict"


class Forbidden(BrainyError):
    status = 403
    code = "forbidden"


class VersionNotVisible(BrainyError):
    status = 503
    code = "version_not_visible"


class VersionNotRetained(BrainyError):
    """A manifest version asked for (time travel) was never committed, or retention
    has deleted it."""

    status = 404
    code = "version_not_retained"


class ClockSkewed(BrainyError):
    """This instance's clock is too far from the object store's to stamp records.

    Attributes:
        skew: seconds the local clock is ahead of the store's (negative: behind).
        limit: the `max_clock_skew` setting, in seconds.
    """

    status = 503
    code = "clock_skew"

    def __init__(self, skew: float, limit: float) -> None:
        direction = "ahead of" if skew > 0 else "behind"
        super().__init__(
            "clock",
            f"this instance's clock is {abs(skew):.1f}s {direction} the object store's, "
            f"beyond max_clock_skew ({limit:g}s): writes are refused until it is corrected",
        )
        self.skew = skew
        self.limit = limit


def parse_json(data: bytes | str, field: str = "body") -> Any:
    """The JSON value in `data`.

    Raises:
        InvalidInput: malformed JSON, naming `field`.
    """
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInput(field, f"malformed JSON ({e})") from None


def parse_json_object(data: bytes | str, field: str = "body") -> dict[str, Any]:
    """The JSON object in `data`.

    Raises:
        InvalidInput: malformed JSON, or a value that is not an object, naming `field`.
    """
    value = parse_json(data, field)
    if not isinstance(value, dict):
        raise InvalidInput(field, "expected a JSON object")
    return value
