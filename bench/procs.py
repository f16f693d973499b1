"""A Brainy function as a real functions-framework process, for benchmarks.

The same shape as the tests' `FunctionServer` (tests/functions/harness.py), which a
benchmark cannot import: `functions-framework --source functions/<name>/main.py
--target <name>` on a loopback port the OS hands out, logging to a file, in its own
process group (so stopping it reaches gunicorn's workers too), killed with the
process that started it (Linux), and stopped on leaving the `with` block even when
the benchmark fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
START_TIMEOUT = 60.0


@dataclass
class Function:
    """A running function: its base `url`, `port`, process and log file."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the server and its workers: under
        a loaded machine, CPU per request measures capacity where wall time cannot."""
        pids = [self.process.pid]
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            pids += [int(p) for p in children.read_text().split()]
        ticks = 0
        for pid in pids:
            with contextlib.suppress(OSError):
                # Fields after the command (which may hold spaces): utime, stime at 11, 12.
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        stop_group(self.process)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """Terminate a process started in its own group, and the group (kill it if it
    lingers); idempotent."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def free_port() -> int:
    """A loopback TCP port the OS says is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _wait_until_ready(fn: Function) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if fn.process.poll() is not None:
            raise RuntimeError(f"{fn.name} exited while starting:\n{fn.log_tail()}")
        try:
            with urllib.request.urlopen(fn.url + "/health", timeout=2) as resp:
                resp.read()
                return
        except urllib.error.HTTPError:
            return  # it answered: it is up
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{fn.name} did not answer within {START_TIMEOUT:.0f}s:\n{fn.log_tail()}")


@contextlib.contextmanager
def serve(
    name: str, env: Mapping[str, str], workdir: Path, repo: Path = REPO
) -> Iterator[Function]:
    """Run `functions/<name>/main.py` with `env` added to this process's environment
    (minus its BRAINY_ and AWS_ variables) until the block ends.

    Args:
        repo: the checkout whose function and layer are served (another one, a
            `git worktree` of main say, to compare before and after a change).

    Yields:
        The function, once `GET /health` answers.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    full = {k: v for k, v in os.environ.items() if not k.startswith(("BRAINY_", "AWS_"))}
    if repo != REPO:
        full["PYTHONPATH"] = str(repo / "layers")
    full.update(env)
    port = free_port()
    log_path = Path(tempfile.mkstemp(prefix=f"{name}-{port}-", suffix=".log", dir=workdir)[1])
    with open(log_path, "wb") as log:
        argv = [
            str(Path(sys.executable).with_name("functions-framework")),
            "--source", str(repo / "functions" / name / "main.py"),
            "--target", name,
            "--host", LOOPBACK,
            "--port", str(port),
        ]  # fmt: skip
        process = subprocess.Popen(
            argv,
            cwd=repo,
            env=full,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        fn = Function(name, port, process, log_path)
        try:
            _wait_until_ready(fn)
            yield fn
        finally:
            fn.stop()
