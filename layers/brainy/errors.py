"""Errors a user can cause. Each names the field at fault and why; `status` is the
HTTP status a function answers it with."""

from __future__ import annotations

from typing import Any


class BrainyError(Exception):
    status = 400
    code = "invalid"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "field": self.field, "reason": self.reason,
                          "message": str(self)}}  # fmt: skip


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
