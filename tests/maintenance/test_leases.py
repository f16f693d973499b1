"""Leases: acquire, renew, release, takeover with fencing tokens, operator tools.

`store` (conftest) runs each test against memory, a local folder, moto (S3) and
fake-gcs-server (GCS); time is a fake clock, never a sleep.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import threading
import time
from pathlib import Path

import pytest

from brainy.maintenance.leases import (
    LOCKS_PREFIX,
    Lease,
    LeaseBusy,
    LeaseLost,
    LeaseManager,
    lock_key,
)
from brainy.storage import ObjectStore, Transient
from brainy.storage.base import RetryPolicy
from brainy.storage.local import LocalStore
from brainy.storage.memory import MemoryStore

TTL = 10.0
SKEW = 2.0


class FakeClock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def manager(store: ObjectStore, owner: str, clock: FakeClock) -> LeaseManager:
    return LeaseManager(store, owner, ttl=TTL, clock=clock, max_skew=SKEW)


def lock_record(store: ObjectStore, resource: str) -> dict[str, object]:
    return json.loads(store.get(lock_key(resource)).data)


def test_acquire_renew_release_round_trip(store: ObjectStore, clock: FakeClock) -> None:
    alice = manager(store, "alice", clock)

    lease = alice.acquire("compact.c")
    assert lease is not None
    assert (lease.resource, lease.owner) == ("compact.c", "alice")
    assert lease.expires_at == clock.now + TTL
    assert lock_record(store, "compact.c")["owner"] == "alice"
    alice.check(lease)

    clock.advance(TTL - 1)
    renewed = alice.renew(lease)
    assert renewed.token == lease.token
    assert renewed.expires_at == clock.now + TTL
    assert renewed.etag != lease.etag
    alice.check(renewed)

    alice.release(renewed)
    with pytest.raises(LeaseLost, match="released"):
        alice.check(renewed)
    # A released lease is free at once, and the next token is still higher.
    bob_lease = manager(store, "bob", clock).acquire("compact.c")
    assert bob_lease is not None and bob_lease.token > lease.token


def test_renewal_keeps_others_out_past_the_first_expiry(
    store: ObjectStore, clock: FakeClock
) -> None:
    alice, bob = manager(store, "alice", clock), manager(store, "bob", clock)
    lease = alice.acquire("r")
    assert lease is not None
    clock.advance(TTL - 1)
    alice.renew(lease)
    clock.advance(SKEW + 2)
    assert bob.acquire("r") is None


def test_second_owner_cannot_acquire_a_held_lease(store: ObjectStore, clock: FakeClock) -> None:
    alice, bob = manager(store, "alice", clock), manager(store, "bob", clock)
    lease = alice.acquire("r")
    assert lease is not None

    assert bob.acquire("r") is None
    with pytest.raises(LeaseBusy, match="held by alice") as busy, bob.hold("r"):
        pytest.fail("entered a held lease")
    assert busy.value.holder is not None
    assert (busy.value.holder.owner, busy.value.holder.token) == ("alice", lease.token)
    # Even the owner itself does not get a second lease on the same resource.
    assert alice.acquire("r") is None
    alice.check(lease)


def test_takeover_after_expiry_fences_the_old_holder(store: ObjectStore, clock: FakeClock) -> None:
    alice, bob = manager(store, "alice", clock), manager(store, "bob", clock)
    old = alice.acquire("r")
    assert old is not None

    clock.advance(TTL + SKEW + 0.1)
    new = bob.acquire("r")
    assert new is not None
    assert new.owner == "bob" and new.token > old.token

    with pytest.raises(LeaseLost, match=f"bob holds it with token {new.token}"):
        alice.renew(old)
    with pytest.raises(LeaseLost):
        alice.check(old)
    alice.release(old)  # not an error to the old holder...
    bob.check(new)  # ...and the new holder's lock is untouched
    assert lock_record(store, "r")["owner"] == "bob"


def test_a_lease_expired_by_less_than_max_skew_is_not_taken(store: ObjectStore) -> None:
    alice_clock, bob_clock = FakeClock(1000.0), FakeClock(1000.0)
    alice = manager(store, "alice", alice_clock)
    bob = manager(store, "bob", bob_clock)
    lease = alice.acquire("r")
    assert lease is not None

    # Bob's clock runs ahead: by his clock alice's lease has expired, by less than the skew.
    bob_clock.advance(TTL + SKEW - 0.1)
    assert bob.acquire("r") is None
    [info] = bob.list_leases()
    assert info.state == "expired"
    alice.check(lease)

    bob_clock.advance(0.2)
    taken = bob.acquire("r")
    assert taken is not None and taken.token > lease.token


def test_racing_takeovers_have_exactly_one_winner(store: ObjectStore, clock: FakeClock) -> None:
    owners = [manager(store, f"owner-{i}", clock) for i in range(4)]
    first = owners[0].acquire("r")
    assert first is not None
    token = first.token
    for _ in range(5):
        clock.advance(TTL + SKEW + 1)
        barrier = threading.Barrier(len(owners))
        won: list[Lease] = []

        def race(m: LeaseManager, barrier: threading.Barrier = barrier, won: list = won) -> None:
            barrier.wait()
            lease = m.acquire("r")
            if lease is not None:
                won.append(lease)

        threads = [threading.Thread(target=race, args=(m,)) for m in owners]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1
        assert won[0].token > token
        token = won[0].token
        owners[0].check(won[0])


@pytest.mark.parametrize(
    "resource",
    ["", "a/b", "..", "a..b", ".", "a\\b", "bad\nname", "nul\x00", "x" * 201, "é" * 101],
)
def test_invalid_resource_names_are_refused_by_name(
    store: ObjectStore, clock: FakeClock, resource: str
) -> None:
    alice = manager(store, "alice", clock)
    with pytest.raises(ValueError, match="lock resource") as err:
        alice.acquire(resource)
    assert repr(resource) in str(err.value)
    with pytest.raises(ValueError):
        alice.break_lease(resource)
    assert list(store.list(LOCKS_PREFIX)) == []


@pytest.mark.parametrize("resource", ["compact.my-collection", "index:c@2", "x" * 200, "é" * 100])
def test_valid_resource_names(resource: str) -> None:
    assert lock_key(resource) == LOCKS_PREFIX + resource


def test_break_lease_frees_it_and_fences_the_holder(store: ObjectStore, clock: FakeClock) -> None:
    alice, operator = manager(store, "alice", clock), manager(store, "ops:carol", clock)
    lease = alice.acquire("r")
    assert lease is not None

    broken = operator.break_lease("r")
    assert broken is not None
    assert (broken.owner, broken.token, broken.state) == ("alice", lease.token, "held")
    with pytest.raises(LeaseLost, match="broken by ops:carol"):
        alice.check(lease)
    with pytest.raises(LeaseLost):
        alice.renew(lease)
    [info] = operator.list_leases()
    assert (info.state, info.updated_by) == ("broken", "ops:carol")

    # Free at once, with a higher token; breaking a free lease does nothing.
    assert operator.break_lease("r") is None
    bob_lease = manager(store, "bob", clock).acquire("r")
    assert bob_lease is not None and bob_lease.token > lease.token
    assert operator.break_lease("never-held") is None


def test_list_leases_shows_every_state(store: ObjectStore, clock: FakeClock) -> None:
    alice, bob = manager(store, "alice", clock), manager(store, "bob", clock)
    released = alice.acquire("a-released")
    assert released is not None
    alice.release(released)
    assert alice.acquire("b-broken") is not None
    bob.break_lease("b-broken")
    store.put(lock_key("c-corrupt"), b"{not json")
    assert alice.acquire("d-expired") is not None
    clock.advance(TTL + 1)
    held = bob.acquire("e-held")
    assert held is not None
    store.put(LOCKS_PREFIX + "nested/ignored", b"{}")

    infos = bob.list_leases()
    assert [(i.resource, i.state) for i in infos] == [
        ("a-released", "released"),
        ("b-broken", "broken"),
        ("c-corrupt", "corrupt"),
        ("d-expired", "expired"),
        ("e-held", "held"),
    ]
    assert (infos[4].owner, infos[4].token, infos[4].expires_at) == (
        "bob",
        held.token,
        held.expires_at,
    )
    assert infos[4].etag == held.etag


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"\xff\xfe", b"[]", b'{"format": 1, "token": "7"}', b'{"format": 99}'],
)
def test_a_corrupt_lock_object_is_taken_over(
    store: ObjectStore, clock: FakeClock, content: bytes
) -> None:
    store.put(lock_key("r"), content)
    lease = manager(store, "alice", clock).acquire("r")
    assert lease is not None
    assert lock_record(store, "r")["owner"] == "alice"


@pytest.mark.parametrize("lost", ["corrupt", "deleted"])
def test_tokens_keep_rising_when_the_lock_object_is_lost(
    store: ObjectStore, clock: FakeClock, lost: str
) -> None:
    """A manifest records the token of the compaction that wrote it and refuses
    commits under a lower one: a token that went back after the lock object was
    damaged would fence out every later compaction for good."""
    alice, bob = manager(store, "alice", clock), manager(store, "bob", clock)
    issued = []
    for _ in range(3):
        lease = alice.acquire("r")
        assert lease is not None
        issued.append(lease.token)
        alice.release(lease)
        clock.advance(0.001)  # an acquisition takes a round trip to the store
    assert issued == sorted(set(issued))

    if lost == "corrupt":
        store.put(lock_key("r"), b"{not json")
    else:
        store.delete(lock_key("r"))
    after = bob.acquire("r")
    assert after is not None and after.token > max(issued)


def test_hold_releases_on_exit_even_after_an_error(store: ObjectStore, clock: FakeClock) -> None:
    alice, bob = manager(store, "alice", clock), manager(store, "bob", clock)
    with alice.hold("r") as lease:
        assert bob.acquire("r") is None
        alice.renew(lease)  # the body renews; the release at exit still finds the lease
    with pytest.raises(RuntimeError), bob.hold("r") as second:
        assert second.token > lease.token
        raise RuntimeError("compaction failed")
    [info] = alice.list_leases()
    assert (info.state, info.token) == ("released", second.token)


def test_an_outdated_copy_of_a_lease_still_works_for_its_holder(
    store: ObjectStore, clock: FakeClock
) -> None:
    alice = manager(store, "alice", clock)
    first = alice.acquire("r")
    assert first is not None
    second = alice.renew(first)
    clock.advance(1)
    renewed_from_stale = alice.renew(first)
    assert renewed_from_stale.etag != second.etag
    alice.check(first)
    alice.release(first)
    [info] = alice.list_leases()
    assert info.state == "released"


class FlakyAfterWriteStore(MemoryStore):
    """Applies a conditional put, then reports a connection reset, once per put."""

    def __init__(self) -> None:
        super().__init__(retry=RetryPolicy(base_delay=0.001))
        self.flaky = True

    def _put(self, key: str, data: bytes, if_absent: bool, if_match: str | None) -> str:
        etag = super()._put(key, data, if_absent, if_match)
        if self.flaky and (if_absent or if_match is not None):
            self.flaky = False
            raise Transient(f"connection reset after writing {key}")
        self.flaky = True
        return etag


def test_a_write_that_landed_before_a_retry_is_recognised(clock: FakeClock) -> None:
    store = FlakyAfterWriteStore()
    alice = manager(store, "alice", clock)
    lease = alice.acquire("r")  # the retried put-if-absent loses to its own first attempt
    assert lease is not None
    alice.check(lease)
    renewed = alice.renew(lease)
    alice.check(renewed)
    alice.release(renewed)
    assert alice.list_leases()[0].state == "released"


def test_manager_arguments_are_validated(store: ObjectStore) -> None:
    with pytest.raises(ValueError, match="owner"):
        LeaseManager(store, "")
    with pytest.raises(ValueError, match="ttl"):
        LeaseManager(store, "a", ttl=0)
    with pytest.raises(ValueError, match="max_skew"):
        LeaseManager(store, "a", max_skew=-1)


# ------------------------------------------------------- several processes, one folder

WINS_PER_PROCESS = 10


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _contend(root: str, log_path: str, owner: str, deadline: float) -> None:
    leases = LeaseManager(LocalStore(root), owner, ttl=30)
    wins = 0
    while wins < WINS_PER_PROCESS and time.time() < deadline:
        lease = leases.acquire("contended")
        if lease is None:
            time.sleep(random.uniform(0, 0.002))
            continue
        _append(log_path, f"start {owner} {lease.token}\n")
        time.sleep(0.001)
        leases.check(lease)
        _append(log_path, f"end {owner} {lease.token}\n")
        leases.release(lease)
        wins += 1


@pytest.mark.slow
def test_processes_on_one_folder_never_overlap(tmp_path: Path) -> None:
    root, log_path = tmp_path / "bucket", tmp_path / "holders.log"
    LocalStore(root)  # create the folder once, before the race
    ctx = multiprocessing.get_context("spawn")
    deadline = time.time() + 15
    workers = [
        ctx.Process(target=_contend, args=(str(root), str(log_path), f"p{i}", deadline))
        for i in range(4)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=30)
    assert [w.exitcode for w in workers] == [0] * 4

    events = [line.split() for line in log_path.read_text().splitlines()]
    starts = events[0::2]
    ends = events[1::2]
    # Each start is followed by the same holder's end: no two holders overlapped.
    assert [e[0] for e in starts] == ["start"] * len(starts)
    assert [e[1:] for e in ends] == [s[1:] for s in starts]
    tokens = [int(s[2]) for s in starts]
    assert len(tokens) == 4 * WINS_PER_PROCESS
    assert tokens == sorted(set(tokens)), "fencing tokens must rise with every holder"
    assert {s[1] for s in starts} == {"p0", "p1", "p2", "p3"}
