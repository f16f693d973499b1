"""The `brainy` command line, run in-process on a local folder store, as a user would."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from brainy.entry.cli import main
from brainy.entry.demo import DEMO_QUERIES
from brainy.storage import open_store


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment of its own: no BRAINY_* from the caller, caches under tmp_path."""
    return {"TMPDIR": str(tmp_path)}


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'store'}"


@pytest.fixture
def brainy(url: str, env: dict[str, str], capsys: pytest.CaptureFixture[str]):
    """`brainy(*args)` → (exit status, stdout, stderr), on the test's store."""

    def run(*args: str) -> tuple[int, str, str]:
        status = main(["--store", url, *args], env=env)
        out, err = capsys.readouterr()
        return status, out, err

    return run


def write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def wal_objects(url: str, collection: str = "docs") -> list[str]:
    return [info.key for info in open_store(url).list(f"{collection}/wal/")]


def test_ingest_then_search_and_status(brainy, tmp_path: Path) -> None:
    assert brainy("collection", "create", "docs", "--dimension", "4", "--metric", "angular")[0] == 0
    data = write_jsonl(
        tmp_path / "data.jsonl",
        [
            {"id": "a", "vector": [1, 0, 0, 0], "metadata": {"color": "red"}},
            {"id": "b", "vector": [0.9, 0.2, 0, 0], "metadata": {"color": "blue"}},
            {"id": "c", "vector": [0, 0, 1, 0], "metadata": {"color": "red"}},
            {"delete": "b"},
            {"id": "d", "text": "a few words", "metadata": {"color": "green"}},
        ],
    )
    status, out, _ = brainy("ingest", str(data), "--collection", "docs")
    assert status == 0
    assert "4 records and 1 delete" in out

    status, out, _ = brainy(
        "search", "--collection", "docs", "--vector", "[1, 0.1, 0, 0]", "--json"
    )
    assert status == 0
    result = json.loads(out)
    ids = [hit["id"] for hit in result["results"]]
    assert ids[0] == "a"
    assert "b" not in ids  # deleted after it was written, as the file says
    assert result["results"][0]["metadata"] == {"color": "red"}

    status, out, _ = brainy(
        "search", "--collection", "docs", "--vector", "[1, 0.1, 0, 0]", "--filter", "color=green"
    )
    assert status == 0
    assert re.search(r"^\s+1\s+\S+\s+d\s", out, re.MULTILINE)
    assert "1 result " in out

    status, out, _ = brainy("status", "--collection", "docs", "--json")
    stats = json.loads(out)
    # The delete of "b" repeats an id, so it starts a second batch: two versions.
    assert (stats["live"], stats["masked"], stats["version"]) == (3, 1, 2)
    status, out, _ = brainy("status", "--collection", "docs")
    assert re.search(r"^live\s+3$", out, re.MULTILINE)
    assert re.search(rf"^version\s+{stats['version']}$", out, re.MULTILINE)


def test_ingest_npy_with_and_without_ids(brainy, tmp_path: Path) -> None:
    vectors = np.random.default_rng(7).normal(size=(120, 8)).astype(np.float32)
    np.save(tmp_path / "v.npy", vectors)
    (tmp_path / "ids.txt").write_text("".join(f"doc-{i}\n" for i in range(120)))
    brainy("collection", "create", "docs", "--dimension", "8", "--metric", "euclidean")

    status, out, _ = brainy(
        "ingest", str(tmp_path / "v.npy"), "--ids", str(tmp_path / "ids.txt"),
        "--collection", "docs", "--batch-size", "50",
    )  # fmt: skip
    assert status == 0
    assert "120 records and 0 deletes" in out and "in 3 batches" in out

    status, out, _ = brainy(
        "search", "--collection", "docs", "--vector-file", str(tmp_path / "v.npy"),
        "--row", "17", "-k", "3", "--json",
    )  # fmt: skip
    assert json.loads(out)["results"][0]["id"] == "doc-17"

    brainy("collection", "create", "rows", "--dimension", "8")
    assert brainy("ingest", str(tmp_path / "v.npy"), "--collection", "rows")[0] == 0
    status, out, _ = brainy("search", "--collection", "rows", "--vector", json.dumps(
        vectors[5].tolist()), "-k", "1", "--json")  # fmt: skip
    assert json.loads(out)["results"][0]["id"] == "row-5"


def test_bad_line_names_the_field_and_writes_no_batch(brainy, url: str, tmp_path: Path) -> None:
    brainy("collection", "create", "docs", "--dimension", "4")
    data = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"id": "ok", "vector": [1, 0, 0, 0]}, {"id": "short", "vector": [1, 0, 0]}],
    )
    # One record a batch: the good first line must not be written either.
    status, _, err = brainy("ingest", str(data), "--collection", "docs", "--batch-size", "1")
    assert status == 2
    assert "error: bad.jsonl:2.vector: expected 4 numbers" in err
    assert "Traceback" not in err
    assert wal_objects(url) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["search", "--collection", "nope", "--text", "x"],
            "error: collection: unknown collection",
        ),
        (["search", "--collection", "docs", "--vector", "[1, 2]"], "error: vector: expected 4"),
        (["search", "--collection", "docs", "--text", "x", "--filter", "f"], "error: --filter"),
        (["status", "--collection", "nope"], "error: collection: unknown collection 'nope'"),
        (["collection", "create", "a/b", "--dimension", "3"], "error: collection: 'a/b'"),
        (
            ["collection", "create", "s", "--dimension", "3", "--partitions", "4", "--nprobe", "5"],
            "error: collection.nprobe: expected an integer in [1, 4]",
        ),
    ],
)
def test_user_errors_exit_2_with_a_message(brainy, args: list[str], message: str) -> None:
    brainy("collection", "create", "docs", "--dimension", "4")
    status, _, err = brainy(*args)
    assert status == 2
    assert err.startswith(message)


def test_collection_create_semantic_with_nprobe(brainy) -> None:
    args = ["--dimension", "4", "--partitions", "16", "--strategy", "semantic"]
    status, out, _ = brainy("collection", "create", "docs", *args, "--nprobe", "3")
    assert status == 0
    assert "partitions 16, strategy semantic (probing 3)" in out
    status, out, _ = brainy("collection", "list", "--json")
    [docs] = json.loads(out)
    assert (docs["strategy"], docs["nprobe"]) == ("semantic", 3)


def test_collection_create_semantic_with_auto_partitions(brainy) -> None:
    args = ["--dimension", "4", "--partitions", "auto", "--strategy", "semantic"]
    status, out, _ = brainy("collection", "create", "docs", *args)
    assert status == 0
    assert "partitions auto, strategy semantic (probing as calibrated" in out
    status, _, err = brainy(
        "collection", "create", "other", "--dimension", "4", "--partitions", "auto"
    )
    assert status == 2 and 'partitions: "auto" needs strategy "semantic"' in err


def test_collection_create_is_idempotent_but_refuses_a_new_dimension(brainy) -> None:
    assert brainy("collection", "create", "docs", "--dimension", "4")[0] == 0
    status, out, _ = brainy("collection", "create", "docs", "--dimension", "4")
    assert status == 0
    assert "already exists" in out

    status, _, err = brainy("collection", "create", "docs", "--dimension", "8")
    assert status == 2
    assert "collections.docs.dimension" in err and "already exists with dimension=4, not 8" in err

    status, out, _ = brainy("collection", "list", "--json")
    assert [(c["name"], c["dimension"]) for c in json.loads(out)] == [("docs", 4)]


def test_demo_prints_results_for_every_query(brainy, url: str) -> None:
    status, out, _ = brainy("demo", "--limit", "300", "--batch-size", "100")
    assert status == 0
    assert re.search(r"corpus: 300 docstrings", out)
    for query in DEMO_QUERIES:
        block = out.split(f'"{query}"', 1)[1].splitlines()
        assert re.match(r"\s+[\d.]+ ms$", block[0])
        assert re.match(r"\s+-?\d\.\d{3}\s+\S+", block[1]), f"no result for {query!r}"
    assert re.search(r"300 records in 3 batches.*manifest version 3", out)


def test_demo_refuses_to_wipe_a_folder_holding_other_files(brainy, tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    status, _, err = brainy("demo", "--store", f"file://{folder}", "--limit", "10")
    assert status == 2
    assert "error: --store:" in err
    assert (folder / "notes.txt").read_text() == "keep me"


def test_python_dash_m_brainy(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "brainy", "--store", f"file://{tmp_path}", "status",
         "--collection", "nope"],
        capture_output=True, text=True, env={"TMPDIR": str(tmp_path)}, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "error: collection: unknown collection 'nope'"


def test_maintenance_commands(brainy, url: str, tmp_path: Path) -> None:
    """compact, verify, gc --dry-run, sweep and locks as an operator runs them."""
    assert brainy("collection", "create", "docs", "--dimension", "4")[0] == 0
    for b in range(3):
        lines = [{"id": f"r{b}-{i}", "vector": [1, b, i, 1]} for i in range(4)]
        data = write_jsonl(tmp_path / f"b{b}.jsonl", lines)
        assert brainy("ingest", str(data), "--collection", "docs")[0] == 0
    # A batch whose event was lost: written, never indexed.
    late = write_jsonl(tmp_path / "late.jsonl", [{"id": "late", "vector": [0, 0, 0, 1]}])
    assert brainy("ingest", str(late), "--collection", "docs", "--no-index")[0] == 0

    status, out, _ = brainy("compact", "--collection", "docs", "--force")
    assert status == 0
    (report,) = json.loads(out)
    assert report["compaction"]["status"] == "compacted"
    assert report["compaction"]["sweep"]["indexed"] == 1  # the lost event, swept up
    assert report["verify"]["ok"] is True

    status, out, _ = brainy("status", "--collection", "docs", "--json")
    assert json.loads(out)["live"] == 13

    status, out, _ = brainy("verify", "--collection", "docs")
    assert status == 0 and json.loads(out)["verify"]["ok"] is True

    before = {info.key for info in open_store(url).list("docs/")}
    status, out, _ = brainy("gc", "--collection", "docs", "--dry-run")
    gc = json.loads(out)
    assert status == 0 and gc["dry_run"] is True
    # Every version is inside the retention window: all of it is still needed.
    assert gc["versions"] == gc["segments"] == gc["batches"] == []
    assert {info.key for info in open_store(url).list("docs/")} == before

    status, out, _ = brainy("sweep", "--collection", "docs")
    assert status == 0 and json.loads(out)["indexed"] == 0

    status, out, _ = brainy("locks", "list")
    (lease,) = json.loads(out)
    assert lease["resource"] == "compact-docs" and lease["state"] == "released"
    status, out, _ = brainy("locks", "break", "compact-docs")
    assert status == 0
    status, _, err = brainy("locks", "break", "../etc")
    assert status == 2 and "resource" in err


def test_verify_finds_and_repairs_a_corrupt_segment(brainy, url: str, tmp_path: Path) -> None:
    assert brainy("collection", "create", "docs", "--dimension", "4")[0] == 0
    data = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "vector": [1, 2, 3, 4]}])
    assert brainy("ingest", str(data), "--collection", "docs")[0] == 0
    store = open_store(url)
    (seg,) = [i.key for i in store.list("docs/segments/")]
    store.put(seg, store.get(seg).data[:-3] + b"xyz")
    status, out, _ = brainy("verify", "--collection", "docs")
    assert status == 1 and json.loads(out)["verify"]["problems"][0]["kind"] == "corrupt-segment"
    status, out, _ = brainy("verify", "--collection", "docs", "--repair")
    assert status == 0 and json.loads(out)["after_repair"]["ok"] is True
    status, out, _ = brainy("search", "--collection", "docs", "--vector", "[1,2,3,4]", "--json")
    assert json.loads(out)["results"][0]["id"] == "a"
