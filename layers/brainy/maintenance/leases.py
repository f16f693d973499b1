"""Leases: named locks kept as small JSON objects under `_brainy/locks/` (DESIGN §5).

A lease only avoids wasted work, such as two compactions of the same segments;
correctness rests on the manifest's compare-and-swap. Each acquisition of a
resource gets a fencing token higher than every one issued before it, so a
committer can record `lease.token` in the manifest, and `LeaseManager.check`
tells a holder that was paused past its expiry that someone else now holds the
lease.

A token is the larger of the previous holder's plus one and the clock in
microseconds. The previous token alone would restart at 1 whenever the lock
object is lost or unreadable, below the tokens manifests already record, and
every later holder would be fenced out for good; the clock alone could step
back. Together they only go down if a lock object is lost *and* the new
holder's clock is behind an earlier holder's by more than the time in between,
which the instances' bound on clock skew rules out.

The lock object of a resource is created once, by put-if-absent, and after that
only rewritten by compare-and-swap on its ETag: release and break mark it free
instead of deleting it, so the previous token is there to be read.

Each holder writes `expires_at` by its own clock. Another instance takes an
expired lease over only when its clock is more than `max_skew` seconds past
that time, so a holder whose clock runs a little behind is not robbed while it
still believes it holds the lease.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Literal

from brainy.storage import ObjectStore
from brainy.storage.cas import Contention, Current, compare_and_swap, read_current

__all__ = [
    "LOCKS_PREFIX",
    "Lease",
    "LeaseBusy",
    "LeaseError",
    "LeaseInfo",
    "LeaseLost",
    "LeaseManager",
    "LeaseState",
    "lock_key",
]

log = logging.getLogger(__name__)

LOCKS_PREFIX = "_brainy/locks/"
MAX_RESOURCE_BYTES = 200
_FORMAT = 1
# Rewrites of our own lease that keep losing to other copies of the same lease
# (a renewing thread racing a releasing one) give up after this many tries.
_CAS_ATTEMPTS = 5

LeaseState = Literal["held", "expired", "released", "broken", "corrupt"]
_RecordState = Literal["held", "released", "broken"]


class _NotHeld(Exception):
    """The lock object no longer holds the lease being rewritten."""


class LeaseError(Exception):
    """Base class of the lease errors."""


class LeaseLost(LeaseError):
    """The lease was taken over, broken or released: its holder must stop."""


class LeaseBusy(LeaseError):
    """Another owner holds the lease and it has not expired.

    Attributes:
        holder: the lease as the lock object shows it, when it could be read.
    """

    def __init__(self, message: str, holder: LeaseInfo | None = None) -> None:
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True)
class Lease:
    """A held lock on one resource.

    Attributes:
        resource: the resource name; the lock object is `lock_key(resource)`.
        owner: who holds it (an instance id).
        token: the fencing token: above every earlier holder's (see the module).
        lease_id: unique to this acquisition; tells apart two holders with one owner name.
        acquired_at: epoch seconds, by the holder's clock.
        expires_at: epoch seconds, by the holder's clock; moved forward by `renew`.
        etag: the lock object's ETag as this lease last wrote it.
    """

    resource: str
    owner: str
    token: int
    lease_id: str
    acquired_at: float
    expires_at: float
    etag: str


@dataclass(frozen=True)
class LeaseInfo:
    """One lock object as an operator sees it (`brainy locks list`).

    Attributes:
        resource: the resource name.
        state: `held`; `expired` (held, but past `expires_at` by the reader's
            clock); `released`; `broken` (freed by an operator); `corrupt`
            (unreadable; the next `acquire` takes it over).
        owner: the holder, or the last holder of a free lease; empty when corrupt.
        token: the fencing token of that holder; 0 when corrupt.
        acquired_at: epoch seconds; 0 when corrupt.
        expires_at: epoch seconds; 0 when corrupt.
        updated_by: who last wrote the object: the holder, or the operator who broke it.
        etag: the lock object's ETag.
    """

    resource: str
    state: LeaseState
    owner: str = ""
    token: int = 0
    acquired_at: float = 0.0
    expires_at: float = 0.0
    updated_by: str = ""
    etag: str = ""


def lock_key(resource: str) -> str:
    """The object key of a resource's lock, after validating the name.

    Args:
        resource: a name such as `compact.my-collection`: not empty, at most
            200 bytes of UTF-8, no `/`, `\\`, `..` or control characters, not `.`.

    Raises:
        ValueError: naming the resource and what is wrong with it.
    """
    problem = _resource_problem(resource)
    if problem:
        raise ValueError(f"lock resource {resource!r}: {problem}")
    return LOCKS_PREFIX + resource


def _resource_problem(resource: str) -> str | None:
    if not isinstance(resource, str) or not resource:
        return "must be a non-empty string"
    if len(resource.encode("utf-8")) > MAX_RESOURCE_BYTES:
        return f"must be at most {MAX_RESOURCE_BYTES} bytes of UTF-8"
    if "/" in resource or "\\" in resource:
        return "must not contain '/' or '\\'"
    if ".." in resource or resource == ".":
        return "must not contain '..' or be '.'"
    if any(unicodedata.category(c) == "Cc" for c in resource):
        return "must not contain control characters"
    return None


@dataclass(frozen=True)
class _Record:
    """The lock object's content."""

    resource: str
    token: int
    state: _RecordState
    owner: str
    lease_id: str
    acquired_at: float
    expires_at: float
    updated_at: float
    updated_by: str

    def encode(self) -> bytes:
        return json.dumps({"format": _FORMAT, **asdict(self)}, sort_keys=True).encode()

    def holds(self, lease: Lease) -> bool:
        return (
            self.state == "held"
            and self.lease_id == lease.lease_id
            and self.token == lease.token
            and self.owner == lease.owner
        )


_NUMBER = (int, float)
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "resource": str,
    "token": int,
    "state": str,
    "owner": str,
    "lease_id": str,
    "acquired_at": _NUMBER,
    "expires_at": _NUMBER,
    "updated_at": _NUMBER,
    "updated_by": str,
}


def _decode(data: bytes) -> _Record | None:
    """The record in a lock object, or None if it is not one this version can read."""
    try:
        raw = json.loads(data)
    except ValueError:  # also UnicodeDecodeError
        return None
    if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
        return None
    for name, kind in _FIELD_TYPES.items():
        value = raw.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return None
    if raw["state"] not in ("held", "released", "broken"):
        return None
    return _Record(**{name: raw[name] for name in _FIELD_TYPES})


@dataclass(frozen=True)
class _Current:
    """A lock object as read: its bytes, ETag and record (None when corrupt)."""

    data: bytes
    etag: str
    record: _Record | None


class LeaseManager:
    """Acquires, renews and releases leases for one owner on one store.

    Args:
        store: the bucket; the lock objects live under `_brainy/locks/`.
        owner: who this manager acquires for; unique per instance (an instance id).
        ttl: seconds a lease lasts after it is acquired or renewed.
        clock: epoch seconds now; a seam for tests.
        max_skew: seconds by which two instances' clocks may disagree; an
            expired lease is taken over only once it is this far past expiry.

    Raises:
        ValueError: on an empty owner, a `ttl` that is not positive or a negative `max_skew`.
    """

    def __init__(
        self,
        store: ObjectStore,
        owner: str,
        *,
        ttl: float = 60.0,
        clock: Callable[[], float] = time.time,
        max_skew: float = 5.0,
    ) -> None:
        if not owner:
            raise ValueError("LeaseManager owner: must be a non-empty string (an instance id)")
        if not ttl > 0:
            raise ValueError(f"LeaseManager ttl: must be positive seconds, got {ttl!r}")
        if not max_skew >= 0:
            raise ValueError(f"LeaseManager max_skew: must be >= 0 seconds, got {max_skew!r}")
        self.store = store
        self.owner = owner
        self.ttl = ttl
        self.clock = clock
        self.max_skew = max_skew

    # ------------------------------------------------------------------ holders

    def acquire(self, resource: str) -> Lease | None:
        """Take the lease on `resource` if it is free, released, broken or long expired.

        A lease expired by more than `max_skew` seconds (by this manager's clock)
        is taken over with a higher token; so is a corrupt lock object.

        Args:
            resource: the resource name (see `lock_key`).

        Returns:
            The lease, or None if another holder has it or won a race for it.

        Raises:
            ValueError: on an invalid resource name.
            StorageError: when the store fails.
        """
        try:
            return self._acquire(resource)
        except LeaseBusy:
            return None

    @contextlib.contextmanager
    def hold(self, resource: str) -> Iterator[Lease]:
        """Hold the lease on `resource` for the body of a `with` block, then release it.

        The body may `renew` the yielded lease; the release at exit still finds it.

        Raises:
            LeaseBusy: another holder has it; `holder` says who.
            ValueError: on an invalid resource name.
        """
        lease = self._acquire(resource)
        try:
            yield lease
        finally:
            self.release(lease)

    def renew(self, lease: Lease) -> Lease:
        """Extend a lease to `ttl` seconds from now.

        A lease past its expiry can still be renewed while nobody has taken it over.

        Returns:
            The renewed lease: same token, later `expires_at`, new `etag`.

        Raises:
            LeaseLost: another holder took it over, an operator broke it, or it was released.
        """
        now = self.clock()
        renewed = replace(lease, expires_at=now + self.ttl)
        etag = self._rewrite(lease, self._record(renewed, "held", now))
        if etag is None:
            raise LeaseLost(self._lost_message(lease, "renew"))
        return replace(renewed, etag=etag)

    def release(self, lease: Lease) -> None:
        """Free a lease so the next `acquire` need not wait for it to expire.

        A lease that was already taken over, broken or released is left alone:
        the new holder's lock is never touched.
        """
        now = self.clock()
        freed = replace(lease, expires_at=now)
        if self._rewrite(lease, self._record(freed, "released", now)) is None:
            log.info(
                "lease %s (token %d) was no longer held by %s at release",
                lease.resource,
                lease.token,
                lease.owner,
            )

    def check(self, lease: Lease) -> None:
        """Make sure the lock object still holds this lease; call it before committing.

        Only the object is consulted: a lease past its `expires_at` passes while
        nobody has taken it over. Renew before a long step instead.

        Raises:
            LeaseLost: another holder took it over, an operator broke it, or it was released.
        """
        current = self._read(lock_key(lease.resource))
        if current is None or current.record is None or not current.record.holds(lease):
            raise LeaseLost(self._lost_message(lease, "check", current))

    # ---------------------------------------------------------------- operators

    def list_leases(self) -> list[LeaseInfo]:
        """Every lock object in the bucket, in resource order (`brainy locks list`)."""
        now = self.clock()
        leases = []
        for obj in self.store.list(LOCKS_PREFIX):
            resource = obj.key[len(LOCKS_PREFIX) :]
            if _resource_problem(resource):
                continue
            current = self._read(obj.key)
            if current is not None:
                leases.append(_info(resource, current, now))
        return leases

    def break_lease(self, resource: str) -> LeaseInfo | None:
        """Free a lease whatever its holder thinks (`brainy locks break RESOURCE`).

        The token is kept, so the next holder's is still higher, and the broken
        holder's next `renew` or `check` raises `LeaseLost`.

        Returns:
            The lease as it was before it was broken, or None if it was not held.

        Raises:
            ValueError: on an invalid resource name.
        """
        key = lock_key(resource)
        before: LeaseInfo | None = None

        def break_it(current: Current) -> bytes | None:
            nonlocal before
            before = None
            if current.data is None:
                return None
            record = _decode(current.data)
            if record is not None and record.state != "held":
                return None
            now = self.clock()
            before = _info(resource, _Current(current.data, current.etag or "", record), now)
            broken = _Record(
                resource=resource,
                token=record.token if record else 0,
                state="broken",
                owner=record.owner if record else "",
                lease_id=record.lease_id if record else "",
                acquired_at=record.acquired_at if record else now,
                expires_at=now,
                updated_at=now,
                updated_by=self.owner,
            )
            return broken.encode()

        try:
            compare_and_swap(self.store, key, break_it, attempts=_CAS_ATTEMPTS)
        except Contention:
            raise LeaseError(f"break {key}: the lock object kept changing; try again") from None
        if before is not None:
            log.warning("lease %s broken by %s", resource, self.owner)
        return before

    # ----------------------------------------------------------------- helpers

    def _acquire(self, resource: str) -> Lease:
        key = lock_key(resource)
        current = self._read(key)
        now = self.clock()
        previous = current.record if current is not None else None
        if current is not None and previous is not None and previous.state == "held":
            if now <= previous.expires_at + self.max_skew:
                raise LeaseBusy(
                    f"lease {resource} is held by {previous.owner} (token {previous.token}) "
                    f"until {previous.expires_at:.3f}",
                    _info(resource, current, now),
                )
            log.info(
                "taking over lease %s from %s (token %d, expired at %.3f)",
                resource,
                previous.owner,
                previous.token,
                previous.expires_at,
            )
        lease = Lease(
            resource=resource,
            owner=self.owner,
            token=max((previous.token if previous else 0) + 1, int(now * 1_000_000)),
            lease_id=uuid.uuid4().hex,
            acquired_at=now,
            expires_at=now + self.ttl,
            etag="",
        )
        data = self._record(lease, "held", now).encode()
        seen = current.etag if current is not None else None

        def claim(found: Current) -> bytes | None:
            if found.etag != seen:
                raise LeaseBusy(f"lease {resource}: another owner acquired it first")
            return data

        start = Current(current.data, current.etag) if current is not None else Current(None, None)
        try:
            etag = compare_and_swap(self.store, key, claim, attempts=2, current=start).etag
        except Contention:
            raise LeaseBusy(f"lease {resource}: another owner acquired it first") from None
        assert etag is not None
        return replace(lease, etag=etag)

    def _rewrite(self, lease: Lease, record: _Record) -> str | None:
        """CAS `record` over the lock object while it still holds `lease`.

        Returns:
            The new ETag, or None if the lease is no longer held.
        """
        key = lock_key(lease.resource)
        data = record.encode()

        def rewrite(current: Current) -> bytes | None:
            if current.data == data:
                return None  # this same write, landed by an earlier attempt
            found = _decode(current.data) if current.data is not None else None
            if found is None or not found.holds(lease):
                raise _NotHeld
            # Held by this lease (another copy of it may have renewed it meanwhile).
            return data

        try:
            return compare_and_swap(self.store, key, rewrite, attempts=_CAS_ATTEMPTS).etag
        except _NotHeld:
            return None
        except Contention:
            raise LeaseError(
                f"update {key}: the lock object kept changing under lease {lease.token}"
            ) from None

    def _read(self, key: str) -> _Current | None:
        current = read_current(self.store, key)
        if current.data is None or current.etag is None:
            return None
        return _Current(current.data, current.etag, _decode(current.data))

    def _record(self, lease: Lease, state: _RecordState, now: float) -> _Record:
        return _Record(
            resource=lease.resource,
            token=lease.token,
            state=state,
            owner=lease.owner,
            lease_id=lease.lease_id,
            acquired_at=lease.acquired_at,
            expires_at=lease.expires_at,
            updated_at=now,
            updated_by=self.owner,
        )

    def _lost_message(self, lease: Lease, op: str, current: _Current | None = None) -> str:
        if current is None:
            current = self._read(lock_key(lease.resource))
        if current is None:
            now_holds = "its lock object is gone"
        elif current.record is None:
            now_holds = "its lock object is corrupt"
        elif current.record.state != "held":
            now_holds = f"it was {current.record.state} by {current.record.updated_by}"
        else:
            now_holds = f"{current.record.owner} holds it with token {current.record.token}"
        return (
            f"{op} lease {lease.resource}: {lease.owner} no longer holds it "
            f"(had token {lease.token}); {now_holds}"
        )


def _info(resource: str, current: _Current, now: float) -> LeaseInfo:
    record = current.record
    if record is None:
        return LeaseInfo(resource, "corrupt", etag=current.etag)
    state: LeaseState = record.state
    if state == "held" and now > record.expires_at:
        state = "expired"
    return LeaseInfo(
        resource=resource,
        state=state,
        owner=record.owner,
        token=record.token,
        acquired_at=record.acquired_at,
        expires_at=record.expires_at,
        updated_by=record.updated_by,
        etag=current.etag,
    )
