"""The crash-point sweep: the whole pipeline (ingest → index → compact → gc) run once
for every primitive store call N, with the process dying just before or just after
call N, then recovered the way production recovers (clients retry with their
Idempotency-Key, the platform redelivers events, the sweeper and the next
compaction run). Whatever N, the live set is exactly what last-writer-wins says
of the batches that exist, every acknowledged request is among them, `verify` is
clean and the manifest history has no gap. Transient failures at any call change
nothing at all."""

from __future__ import annotations

import dataclasses
import itertools
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from brainy.core.config import CollectionSchema, Settings, load_settings
from brainy.format.batch import WAL, Batch, collection_of_batch, keyed_batch_key
from brainy.maintenance.compaction import compact
from brainy.maintenance.gc import collect_garbage, referenced_keys
from brainy.maintenance.leases import LeaseManager
from brainy.maintenance.sweeper import sweep
from brainy.maintenance.verify import verify
from brainy.service.app import Brainy
from brainy.storage import PreconditionFailed, StorageError, open_store
from brainy.table.manifest import Manifest, Manifests
from brainy.write.events import ObjectCreated
from brainy.write.ingest import IngestOutcome
from faults import WRITE_OPS, Crash, Fault, FaultyStore
from helpers import LWWModel, declare, level0_sources, live_state, make_app, superseded

COLLECTION = "docs"
DIM = 4

# Every object the workload leaves is "old" to a GC that runs this far in the future:
# past retention, the batch retention and every grace period.
FUTURE = 30 * 86400.0


@dataclass(frozen=True)
class Request:
    """One client request: a writer's upserts and deletes under its Idempotency-Key."""

    writer: int
    key: str
    upserts: tuple[tuple[str, tuple[float, ...]], ...] = ()
    deletes: tuple[str, ...] = ()

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"collection": COLLECTION}
        if self.upserts:
            body["records"] = [
                {"id": rid, "vector": list(vec), "metadata": {"by": self.key}}
                for rid, vec in self.upserts
            ]
        if self.deletes:
            body["deletes"] = list(self.deletes)
        return body

    @property
    def batch_key(self) -> str:
        return keyed_batch_key(COLLECTION, self.key)


def _requests() -> tuple[list[Request], list[Request]]:
    """Before and after the first compaction: overlapping ids across writers, an id
    upserted again, deleted, resurrected, and one request sent twice by its client."""
    rng = np.random.default_rng(3)

    def vec() -> tuple[float, ...]:
        return tuple(float(x) for x in rng.standard_normal(DIM).astype(np.float32))

    first = [
        Request(0, "w0-a", (("a", vec()), ("b", vec()), ("c", vec()))),
        Request(1, "w1-a", (("b", vec()), ("d", vec()))),
        Request(2, "w2-a", (("a", vec()),), deletes=("c",)),
        Request(0, "w0-b", (("c", vec()), ("e", vec())), deletes=("d",)),
        Request(1, "w1-b", (("a", vec()), ("f", vec())), deletes=("b",)),
    ]
    # After compaction and GC: a delete and an upsert landing on compacted segments.
    late = [Request(2, "w2-b", (("e", vec()),), deletes=("a",))]
    return first, late


FIRST, LATE = _requests()
# A client that timed out resends its request verbatim: same key, same body.
RESENT = FIRST[1]


class Pipeline:
    """One run of the workload on a fresh memory store behind a `FaultyStore`.

    Each role runs as an instance of its own; when a step raises `Crash`, that
    instance is dropped, as a dead process would be, and the next step of the role
    gets a fresh instance (cold caches, a new writer id).
    """

    def __init__(self, workdir: Path, plan: dict[int, Fault] | None = None) -> None:
        self.workdir = workdir
        self.url = f"memory://faults-{uuid.uuid4().hex}"
        inner = open_store(self.url)
        self.settings = {
            role: load_settings(
                {
                    "BRAINY_STORE": self.url,
                    "BRAINY_ROLE": role,
                    "BRAINY_REFRESH_INTERVAL": "0",
                    # Lets compaction drop tombstones right after its sweep.
                    "BRAINY_TOMBSTONE_GRACE": "0",
                },
                store=inner,
            )[0]
            for role in ("ingest", "indexer", "compactor")
        }
        setup = Brainy(self._fresh(self.settings["compactor"]), inner)
        setup.create_collection(CollectionSchema(COLLECTION, dimension=DIM, partitions=2, seed=5))
        self.store = FaultyStore(inner, plan)
        self.apps: dict[str, Brainy] = {}
        self.acked: dict[str, str] = {}  # Idempotency-Key → the batch key its 202 named
        self.crashed: list[str] = []  # the steps that died

    def _fresh(self, settings: Settings) -> Settings:
        cache = tempfile.mkdtemp(prefix="cache-", dir=self.workdir)
        return dataclasses.replace(settings, cache_dir=cache)

    def app(self, name: str) -> Brainy:
        if name not in self.apps:
            role = name.split("-")[0]
            self.apps[name] = Brainy(self._fresh(self.settings[role]), self.store)
        return self.apps[name]

    def step(self, name: str, instance: str, fn: Callable[[Brainy], object]) -> None:
        try:
            fn(self.app(instance))
        except Crash:
            self.crashed.append(name)
            del self.apps[instance]

    # ------------------------------------------------------------------ steps

    def ingest(self, req: Request) -> IngestOutcome:
        """A careful client: on a dead connection it resends with the same key."""
        instance = f"ingest-{req.writer}"
        for _ in range(3):
            try:
                outcome = self.app(instance).ingest(req.payload(), req.key)
            except Crash:
                self.crashed.append(f"ingest {req.key}")
                del self.apps[instance]
                continue
            self.acked[req.key] = outcome.batch
            return outcome
        raise AssertionError(f"{req.key}: never acknowledged")

    def deliver(self, key: str, instance: str = "indexer-0") -> None:
        self.step(
            f"index {key}",
            instance,
            lambda app: app.index_objects([ObjectCreated(app.store.bucket or "", key)]),
        )

    def compact(self, leases_expired: bool = False) -> None:
        def run(app: Brainy) -> None:
            leases = None
            if leases_expired:
                # A dead compactor's lease is expired by the time anyone recovers.
                ttl = app.settings.lease_ttl
                leases = LeaseManager(
                    app.store, app.writer_id, ttl=ttl, clock=lambda: time.time() + 2 * ttl + 60
                )
            compact(app.maintenance, COLLECTION, force=True, leases=leases)

        self.step("compact", "compactor-0", run)

    def gc(self) -> None:
        def run(app: Brainy) -> None:
            collect_garbage(app.store, COLLECTION, app.settings, now=time.time() + FUTURE)

        self.step("gc", "compactor-0", run)

    def workload(self) -> None:
        for req in FIRST:
            self.ingest(req)
            self.deliver(req.batch_key)
        self.ingest(RESENT)
        self.deliver(RESENT.batch_key)
        # Before any compaction: a batch whose event died with its indexer is not yet
        # applied here, and must survive this GC.
        self.gc()
        self.compact()
        self.gc()
        for req in LATE:
            self.ingest(req)
            self.deliver(req.batch_key)
        # Rewrites the level-1 segments the late delete masked.
        self.compact()

    def recover(self) -> None:
        """What production does next: every batch's event again (twice, out of
        order), a sweep, a compaction after the dead lease expired, a GC."""
        self.store.plan.clear()
        landed = self.landed_batches()
        for key in [*reversed(landed), *landed]:
            self.deliver(key, "indexer-recovery")
        sweep(self.app("indexer-recovery").maintenance, COLLECTION)
        self.compact(leases_expired=True)
        self.gc()

    # -------------------------------------------------------------- evidence

    def landed_batches(self) -> list[str]:
        """Every batch key whose put reached the store (GC may have removed it since)."""
        return sorted(k for k in self.store.written if collection_of_batch(k) == COLLECTION)

    def model(self) -> dict[str, Any]:
        model = LWWModel()
        for key in self.landed_batches():
            model.apply_batch(Batch.decode(self.store.written[key], key))
        return model.live()

    def history(self) -> list[Manifest]:
        """Every manifest version ever committed, in order (GC removes old ones from
        the store; the wrapper kept what each commit wrote)."""
        manifests = Manifests(self.store.inner, COLLECTION)
        versions = sorted(
            int(k[len(manifests.prefix) : -len(".json")])
            for k in self.store.written
            if k.startswith(manifests.prefix) and k.endswith(".json")
        )
        return [Manifest.from_json(self.store.written[manifests.key(v)]) for v in versions]


def _assert_sound(run: Pipeline, label: str) -> dict[str, Any]:
    """The invariants every run must end in; returns the live set."""
    landed = set(run.landed_batches())
    requests = {*FIRST, *LATE}
    # Every request was acknowledged in the end (its client retried), under the key
    # its Idempotency-Key maps to, and exactly those batches exist: no duplicate.
    assert set(run.acked) == {r.key for r in requests}, label
    assert set(run.acked.values()) == {r.batch_key for r in requests} == landed, label
    assert not [k for k in run.store.inner.list(f"{COLLECTION}/quarantine/")], label

    state = live_state(run.url, COLLECTION)
    assert state == run.model(), f"{label}: live set differs from last-writer-wins"

    report = verify(run.store.inner, COLLECTION)
    assert report.ok, f"{label}: verify found {report.problems}"

    history = run.history()
    assert [m.version for m in history] == list(range(1, len(history) + 1)), label
    present = {info.key for info in run.store.inner.list(f"{COLLECTION}/{WAL}/")}
    applied: set[str] = set()
    for parent, child in itertools.pairwise([None, *history]):
        before = level0_sources(parent) if parent else set()
        added = level0_sources(child) - before
        where = f"{label}: v{child.version} by {child.committed_by}"
        # An index commit adds its one batch, once; a compaction adds nothing.
        assert len(added) <= 1 and not added & applied, where
        applied |= added
    latest = Manifests(run.store.inner, COLLECTION).latest()
    assert latest is not None and latest.version == history[-1].version, label
    stored = Manifests(run.store.inner, COLLECTION).versions()
    assert stored == list(range(stored[0], latest.version + 1)), f"{label}: gap in {stored}"
    # Every batch that landed was applied by one commit, unless newer records beat
    # every one of its records before it was indexed (then it commits nothing).
    beaten = superseded(_Written(run.store.written), sorted(landed))
    assert landed - applied <= beaten, label

    # The recovery's forced compaction and far-future GC leave nothing behind: one
    # level of segments, no masked rows, no orphan object, no batch left to keep.
    assert all(ref.level == 1 for ref in latest.segments), label
    assert latest.masked == 0, label
    referenced = referenced_keys(latest)
    objects = {
        info.key
        for prefix in ("segments", "deletes", "meta")
        for info in run.store.inner.list(f"{COLLECTION}/{prefix}/")
    }
    assert objects == referenced, f"{label}: orphans {sorted(objects - referenced)}"
    assert not present, f"{label}: batches kept {sorted(present)}"
    return state


class _Written:
    """What the store was given, readable like a store (GC deleted the batches)."""

    def __init__(self, written: dict[str, bytes]) -> None:
        self.written = written

    def get(self, key: str) -> Any:
        return dataclasses.make_dataclass("Blob", ["data"])(self.written[key])


def _shape(op: str, key: str) -> tuple[str, str]:
    """A call with its segment id and side-object and probe names blanked: segments
    hold writer ids and timestamps, so their content-addressed keys differ from run
    to run, and each deletion file, lineage and clock probe has a name of its own."""
    key = re.sub(r"segments/[0-9a-f]+", "segments/*", key)
    key = re.sub(r"(deletes|lineage)/[0-9a-f]+/?[0-9a-f-]*", r"\1/*", key)
    return op, re.sub(r"_brainy/probes/.*", "_brainy/probes/*", key)


@dataclass(frozen=True)
class Baseline:
    """The run without faults: its call count T (the crash points), its calls (to
    name each point) and the live set every transient run must reproduce."""

    calls: int
    ops: list[tuple[str, str]]
    state: dict[str, Any]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    run = Pipeline(tmp_path_factory.mktemp("baseline"))
    run.workload()
    calls = run.store.count
    ops = [_shape(c.op, c.key) for c in run.store.calls]
    run.recover()
    state = _assert_sound(run, "no fault")
    return Baseline(calls, ops, state)


def test_workload_exercises_every_step(baseline: Baseline):
    kinds = {op for op, _ in baseline.ops}
    assert {"get", "put", "list", "upload", "download", "delete"} <= kinds
    assert any("/manifests/0" in key for op, key in baseline.ops if op == "put")
    # Deletion files and lineages are written (and so crashed around) too.
    assert any("/deletes/" in key for op, key in baseline.ops if op == "put")
    assert any("/meta/lineage/" in key for op, key in baseline.ops if op == "put")
    assert any("/segments/" in key for op, key in baseline.ops if op == "delete"), "gc idle"
    assert set(baseline.state) == set(_expected_ids())


def _expected_ids() -> set[str]:
    model: dict[str, bool] = {}
    for req in [*FIRST, *LATE]:
        for rid, _ in req.upserts:
            model[rid] = True
        for rid in req.deletes:
            model[rid] = False
    return {rid for rid, live in model.items() if live}


@pytest.mark.parametrize("fault", ["crash-before", "crash-after"])
def test_crash_at_every_call_then_recovery_is_exact(
    fault: Fault, baseline: Baseline, tmp_path: Path
):
    died_in: set[str] = set()
    for n in range(1, baseline.calls + 1):
        run = Pipeline(tmp_path, {n: fault})
        run.workload()
        fired = run.store.fired()
        label = f"{fault} at call {n} ({baseline.ops[n - 1][0]} {baseline.ops[n - 1][1]})"
        # The prefix up to N is deterministic, so the fault hit the planned call.
        assert [_shape(c.op, c.key) for c in fired] == [baseline.ops[n - 1]], label
        assert run.crashed, f"{label}: nothing noticed the crash"
        died_in.add(run.crashed[0].split()[0])
        run.recover()
        _assert_sound(run, f"{label}, died in {run.crashed[0]}")
    assert died_in == {"ingest", "index", "compact", "gc"}


@pytest.mark.parametrize("fault", ["transient", "lost-response"])
def test_transient_failure_at_every_call_changes_nothing(
    fault: Fault, baseline: Baseline, tmp_path: Path
):
    for n in range(1, baseline.calls + 1):
        if fault == "lost-response" and baseline.ops[n - 1][0] not in WRITE_OPS:
            continue  # a read whose answer is lost is just a transient read
        run = Pipeline(tmp_path, {n: fault})
        run.workload()
        label = f"{fault} at call {n} ({baseline.ops[n - 1][0]} {baseline.ops[n - 1][1]})"
        assert [_shape(c.op, c.key) for c in run.store.fired()] == [baseline.ops[n - 1]], label
        assert not run.crashed, label
        run.recover()
        assert _assert_sound(run, label) == baseline.state, label


def test_fault_kinds_do_what_they_say():
    inner = open_store(f"memory://kinds-{uuid.uuid4().hex}")
    store = FaultyStore(
        inner, {1: "crash-before", 2: "crash-after", 3: "transient", 5: "lost-response"}
    )
    with pytest.raises(Crash):
        store.put("a", b"1")
    assert not inner.exists("a")
    with pytest.raises(Crash):
        store.put("b", b"2")
    assert inner.get("b").data == b"2"
    # Retried by the base class: call 3 fails, call 4 lands.
    assert store.put("c", b"3", if_absent=True)
    # Landed, answer lost, retried: the retry meets its own write.
    with pytest.raises(PreconditionFailed):
        store.put("d", b"4", if_absent=True)
    assert inner.get("d").data == b"4"
    assert [(c.n, c.op, c.key, c.fault, c.landed) for c in store.calls] == [
        (1, "put", "a", "crash-before", False),
        (2, "put", "b", "crash-after", True),
        (3, "put", "c", "transient", False),
        (4, "put", "c", None, True),
        (5, "put", "d", "lost-response", True),
        (6, "put", "d", None, False),
    ]
    assert store.requests["put"] == 6
    assert not issubclass(Crash, StorageError)


def test_idempotent_resend_is_acknowledged_without_a_second_batch(tmp_path: Path):
    run = Pipeline(tmp_path)
    first, again = run.ingest(FIRST[0]), run.ingest(FIRST[0])
    assert (first.batch, first.created) == (FIRST[0].batch_key, True)
    assert (again.batch, again.created) == (FIRST[0].batch_key, False)
    written = [c.key for c in run.store.calls if c.op == "put" and c.landed]
    assert [k for k in written if not k.startswith("_brainy/probes/")] == [first.batch]


@pytest.mark.parametrize("kind", ["memory", "file", "s3"])
@pytest.mark.parametrize("moment", ["head", "delete"])
def test_gc_never_deletes_a_segment_a_redelivery_just_committed(
    kind: str, moment: str, store_url: Callable[[str], str], tmp_path: Path
):
    """An indexer dies between uploading a segment and committing it; much later GC
    finds the orphan, and just as it checks (or deletes) it, the batch's event is
    redelivered, so the batch is built, uploaded and committed again. The committed
    manifest may not reference a missing object. (On S3 an identical rewrite keeps
    its ETag, the MD5 of the content, so a conditional delete cannot tell it from
    the orphan: only a key that is new per build keeps it safe.)"""
    url = store_url(kind)
    inner = open_store(url)
    env = {
        "BRAINY_STORE": url,
        "BRAINY_CACHE_DIR": str(tmp_path / "cache"),
        "BRAINY_REFRESH_INTERVAL": "0",
    }
    settings = load_settings(env, role="cli", store=inner)[0]
    Brainy(settings, inner).create_collection(CollectionSchema(COLLECTION, dimension=DIM))
    key = Brainy(settings, inner).ingest(FIRST[0].payload(), FIRST[0].key).batch

    def die_at_commit(n: int, op: str, k: str) -> Fault | None:
        return "crash-before" if op == "put" and "/manifests/0" in k else None

    with pytest.raises(Crash):
        Brainy(settings, FaultyStore(inner, rule=die_at_commit)).index_key(key)
    [orphan] = [info.key for info in inner.list(f"{COLLECTION}/segments/")]
    redelivered: list[str] = []

    def redeliver(n: int, op: str, k: str) -> None:
        if op == moment and k == orphan and not redelivered:
            redelivered.append(Brainy(settings, inner).index_key(key).status)

    collect_garbage(
        FaultyStore(inner, before=redeliver), COLLECTION, settings, now=time.time() + FUTURE
    )
    assert redelivered == ["applied"]
    report = verify(inner, COLLECTION)
    assert report.ok, report.problems
    assert set(live_state(url, COLLECTION)) == {rid for rid, _ in FIRST[0].upserts}


def test_a_batch_the_sweep_could_not_read_keeps_its_tombstones(tmp_path: Path):
    """An upsert whose event was lost, then a newer delete of the same id, indexed.
    Compaction's sweep cannot read the old batch (the store keeps failing on it), so
    it may not drop the delete's tombstone: once the batch is readable again and
    swept, the old upsert must stay masked, not come back from the dead."""
    url = f"memory://faults-{uuid.uuid4().hex}"
    inner = open_store(url)
    env = {
        "BRAINY_STORE": url,
        "BRAINY_CACHE_DIR": str(tmp_path / "cache"),
        "BRAINY_REFRESH_INTERVAL": "0",
        "BRAINY_TOMBSTONE_GRACE": "0",
    }
    settings = load_settings(env, role="cli", store=inner)[0]
    unreadable: set[str] = set()

    def outage(n: int, op: str, key: str) -> Fault | None:
        return "transient" if op == "get" and key in unreadable else None

    app = Brainy(settings, FaultyStore(inner, rule=outage))
    app.create_collection(CollectionSchema(COLLECTION, dimension=DIM))
    old = app.ingest(FIRST[0].payload(), FIRST[0].key).batch  # its event is lost
    delete = Request(1, "delete-a", deletes=("a",))
    app.index_key(app.ingest(delete.payload(), delete.key).batch)

    unreadable.add(old)
    report = compact(app.maintenance, COLLECTION, force=True)
    assert report.sweep["failed"] == [old]
    unreadable.clear()
    assert sweep(app.maintenance, COLLECTION).indexed_keys == [old]

    expected = {rid for rid, _ in FIRST[0].upserts} - {"a"}
    assert set(live_state(url, COLLECTION)) == expected
    assert verify(inner, COLLECTION).ok


def test_a_duplicate_delivery_that_loses_the_race_reports_already_applied(tmp_path: Path):
    """Indexer A builds a batch's segment; before A's commit lands, indexer B commits
    the same batch. A rebases, finds it applied, and must say so."""
    url = f"memory://dup-race-{time.time_ns()}"
    app = make_app(url, tmp_path)
    declare(app)
    key = app.ingest({"collection": "docs", "records": [{"id": "a", "vector": [1.0] * 8}]}).batch
    inner = open_store(url)
    other: list = []

    def b_first(n: int, op: str, obj: str) -> None:
        if op == "put" and "/manifests/0" in obj and not other:
            settings, _ = load_settings({"BRAINY_STORE": url}, role="indexer", store=inner)
            other.append(Brainy(settings, inner).index_key(key))

    faulty = FaultyStore(inner, before=b_first)
    settings, _ = load_settings({"BRAINY_STORE": url}, role="indexer", store=faulty)
    mine = Brainy(settings, faulty).index_key(key)
    assert other[0].status == "applied" and other[0].version == 1
    assert mine.status == "already-applied" and mine.version == 1
