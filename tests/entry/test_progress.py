"""Progress bars on long CLI work: drawn when stderr is a terminal (a real pty),
never when it is a pipe or a file, where the plain progress lines stay."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from brainy.entry.cli import main

GRACE = 2.0
BAR = re.compile(r"(\w+): +100%\|")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRAINY_")}
    env.update(TMPDIR=str(tmp_path), BRAINY_STORE=(tmp_path / "store").as_uri())
    return env


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data.jsonl"
    lines = [{"id": f"r{i}", "vector": [1.0, i % 7, i % 5, 1.0]} for i in range(300)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `brainy ARGS` with stderr on a pseudo-terminal; (status, what it drew)."""
    leader, follower = pty.openpty()
    # A terminal of 24 rows by 100 columns (a fresh pty has none: 0 by 0).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "brainy", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    return process.wait(timeout=120), drawn.decode(errors="replace")


def test_bars_on_a_terminal(env: dict[str, str], data: Path) -> None:
    assert on_a_terminal(["collection", "create", "docs", "--dimension", "4"], env)[0] == 0

    status, drawn = on_a_terminal(
        ["ingest", str(data), "--collection", "docs", "--batch-size", "50"], env
    )
    assert status == 0, drawn
    assert "ingest: 100%|" in drawn and "300/300" in drawn
    assert "batch 1:" not in drawn  # the bar replaces the per-batch lines

    # Old versions and the segments merged away go once GRACE has passed, so the
    # collector has objects to delete (and a bar to draw).
    time.sleep(GRACE + 0.2)
    collect = {**env, "BRAINY_RETENTION": "0", "BRAINY_GC_GRACE": f"{GRACE}s"}
    status, drawn = on_a_terminal(["compact", "--collection", "docs", "--force"], collect)
    assert status == 0, drawn
    assert {"compact", "gc", "verify"} <= set(BAR.findall(drawn)), drawn

    status, drawn = on_a_terminal(["verify", "--collection", "docs"], env)
    assert status == 0 and "verify: 100%|" in drawn, drawn


def test_no_bar_when_stderr_is_not_a_terminal(
    env: dict[str, str], data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["collection", "create", "docs", "--dimension", "4"], env=env) == 0
    assert main(["ingest", str(data), "--collection", "docs", "--batch-size", "50"], env=env) == 0
    err = capsys.readouterr().err
    assert "batch 6: 50 records, 0 deletes -> version" in err  # the plain lines stay
    for args in (
        ["compact", "--collection", "docs", "--force"],
        ["verify", "--collection", "docs"],
    ):
        assert main(args, env=env) == 0
        err += capsys.readouterr().err
    assert "%|" not in err and "\r" not in err
