"""`brainy dev` (what `make dev` runs), used as a user would: started as a process,
its URLs read from `urls.json`, records ingested over HTTP become searchable with no
indexing step (moto's S3 notifies its SQS, the relay posts the CloudEvent to the
indexer), a deleted id disappears, the CLI with the printed environment sees the
same bucket, and Ctrl-C leaves no process running and no port open.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from brainy.entry import dev, processes

START_TIMEOUT = 240.0  # four functions and moto on two shared cores
WAIT = 60.0


def _processes() -> dict[int, tuple[int, str]]:
    """Every process: pid -> (parent pid, start time), from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        found[int(entry.name)] = (int(fields[1]), fields[19])  # ppid, starttime
    return found


def descendants(pid: int) -> dict[int, str]:
    """The processes below `pid`, with their start times (to tell a reused pid)."""
    table = _processes()
    out: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, started) in table.items():
            if ppid == parent and child not in out:
                out[child] = started
                frontier.append(child)
    return out


def still_running(procs: dict[int, str]) -> list[int]:
    table = _processes()
    return [pid for pid, started in procs.items() if table.get(pid, (0, ""))[1] == started]


def port_open(url: str) -> bool:
    parsed = urlparse(url)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((parsed.hostname, parsed.port)) == 0


def request(method: str, url: str, body: bytes | None = None, headers: Any = None) -> Any:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def replay_curl(command: str) -> Any:
    """Send the request a printed `curl -X POST URL -H ... -d BODY` example describes."""
    argv = shlex.split(command)
    assert argv[0] == "curl"
    url = next(a for a in argv if a.startswith("http://"))
    header = argv[argv.index("-H") + 1].split(": ", 1)
    body = argv[argv.index("-d") + 1].encode()
    return request(argv[argv.index("-X") + 1], url, body, {header[0]: header[1]})


def search_ids(urls: dict[str, Any], text: str) -> list[str]:
    body = json.dumps({"collection": urls["collection"], "text": text, "k": 10}).encode()
    reply = request("POST", urls["search"] + "/search", body, {"Content-Type": "application/json"})
    return [hit["id"] for hit in reply["results"]]


def eventually(check: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"not within {WAIT:.0f} s: {what}"
        time.sleep(0.2)


@pytest.fixture
def dev_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`brainy dev --dir <tmp>/dev` as a process of its own; killed if a test leaves it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRAINY_", "AWS_"))}
    out = open(tmp_path / "dev.out", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "brainy", "dev", "--dir", str(tmp_path / "dev")],
        cwd=tmp_path,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        yield process, tmp_path / "dev"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # it stops its children
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        out.close()


def wait_for_urls(process: subprocess.Popen[bytes], workdir: Path) -> dict[str, Any]:
    path = workdir / "urls.json"
    deadline = time.monotonic() + START_TIMEOUT
    while not path.exists():
        assert process.poll() is None, (workdir.parent / "dev.out").read_text()
        assert time.monotonic() < deadline, "brainy dev did not write urls.json"
        time.sleep(0.2)
    return json.loads(path.read_text())


@pytest.mark.slow
def test_the_dev_stack_indexes_on_its_own_event_path_and_stops_everything(
    dev_process: tuple[subprocess.Popen[bytes], Path],
) -> None:
    process, workdir = dev_process
    urls = wait_for_urls(process, workdir)
    children = descendants(process.pid)
    assert len(children) >= 6  # moto, four functions (and their workers), the relay
    services = [urls[name] for name in ("ingest", "search", "indexer", "compactor")]
    assert all(port_open(url) for url in [*services, urls["s3"]])
    printed = (workdir.parent / "dev.out").read_text()
    examples = [line.strip() for line in printed.splitlines() if line.strip().startswith("curl")]
    assert len(examples) == 3
    for name, value in urls["env"].items():
        assert f"export {name}={shlex.quote(value)}" in printed

    # The first example ingests; nobody indexes by hand, yet the search finds them.
    assert replay_curl(examples[0])["accepted"] == 2
    eventually(lambda: {"hello", "bonjour"} <= set(search_ids(urls, "hello world")), "indexed")
    hits = replay_curl(examples[1])["results"]
    assert hits[0]["id"] == "hello"

    # The CLI, with the printed environment, reads the same bucket.
    cli_env = {**os.environ, **urls["env"]}
    status = subprocess.run(
        [sys.executable, "-m", "brainy", "status", "--collection", urls["collection"], "--json"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["live"] == 2

    # The third example deletes "hello": it disappears, "bonjour" stays.
    assert replay_curl(examples[2])["deleted"] == 1
    eventually(lambda: "hello" not in search_ids(urls, "hello world"), "the delete applied")
    assert "bonjour" in search_ids(urls, "bonjour")

    # Ctrl-C: everything stops, no port stays open, urls.json is gone.
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    assert still_running(children) == []
    assert not any(port_open(url) for url in [*services, urls["s3"]])
    assert not (workdir / "urls.json").exists()


def test_a_failure_while_starting_stops_what_was_already_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[processes.Child] = []
    spawn = processes.spawn

    def recording_spawn(*args: Any, **kw: Any) -> processes.Child:
        child = spawn(*args, **kw)
        started.append(child)
        return child

    monkeypatch.setattr(processes, "spawn", recording_spawn)
    monkeypatch.setattr(dev, "FUNCTIONS", ("ingest", "no-such-function"))

    with pytest.raises(RuntimeError, match="no-such-function"):
        dev.run_dev(tmp_path / "dev", sys.stdout)

    assert [c.name for c in started] == ["moto", "ingest", "no-such-function"]
    assert all(c.process.poll() is not None for c in started)
    assert not any(port_open(c.url) for c in started)
    assert not (tmp_path / "dev" / "urls.json").exists()
    assert "stopping the dev stack" in capsys.readouterr().out


def test_ctrl_c_while_starting_stops_what_was_already_started(
    dev_process: tuple[subprocess.Popen[bytes], Path],
) -> None:
    process, workdir = dev_process
    children: dict[int, str] = {}
    eventually(lambda: children.update(descendants(process.pid)) or children, "a child started")
    assert not (workdir / "urls.json").exists()  # still starting

    process.send_signal(signal.SIGINT)

    assert process.wait(timeout=60) == 130
    children.update(descendants(process.pid))
    assert still_running(children) == []
    assert not (workdir / "urls.json").exists()
