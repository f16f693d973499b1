"""The compactor function, as a scheduler calls it: `POST /compact` sweeps batches
whose events were lost, merges segments under the lease, collects garbage and
verifies — on the local folder store and on S3 (moto)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from brainy.storage import open_store
from brainy.table.manifest import Manifests
from conftest import Launcher
from helpers import declare, live_state, make_app
from servers import emulator_env


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_post_compact_sweeps_merges_and_verifies(
    kind: str,
    launch: Launcher,
    store_url: Callable[[str], str],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    url = store_url(kind)
    emulators = emulator_env(s3=request.getfixturevalue("moto_server")) if kind == "s3" else {}
    app = make_app(url, tmp_path)
    declare(app, dimension=4, partitions=2)
    for b in range(3):
        records = [{"id": f"r{b}-{i}", "vector": [1.0, b, i, 1.0]} for i in range(4)]
        app.index_key(app.ingest({"collection": "docs", "records": records}).batch)
    lost = app.ingest({"collection": "docs", "records": [{"id": "lost", "vector": [0, 0, 1, 1]}]})
    expected = {*(f"r{b}-{i}" for b in range(3) for i in range(4)), "lost"}

    compactor = launch("compactor", url, emulators)
    reply = compactor.post("/compact", {"collection": "docs", "force": True})

    assert reply.status == 200, str(reply)
    (report,) = reply.json()["collections"]
    assert report["compaction"]["status"] == "compacted"
    assert report["compaction"]["sweep"]["indexed_keys"] == [lost.batch]
    assert report["verify"]["ok"] is True
    assert set(live_state(url, "docs")) == expected
    manifest = Manifests(open_store(url, read_only=True), "docs").latest()
    assert {ref.level for ref in manifest.segments} == {1}
    assert compactor.get("/health").json()["role"] == "compactor"


def test_post_compact_of_an_unknown_collection_names_it(
    launch: Launcher, file_store_url: str
) -> None:
    compactor = launch("compactor", file_store_url)
    reply = compactor.post("/compact", {"collection": "nope"})
    assert reply.status == 404, str(reply)
    assert reply.error["field"] == "collection"
