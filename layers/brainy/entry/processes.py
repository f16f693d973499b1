"""Child processes on loopback ports: what `brainy dev`, the tests' emulators and
function servers, and the benchmarks all start the same way.

A child runs in a process group of its own (so stopping it reaches gunicorn's
workers too), logs into a file (a pipe nobody drains would stall a chatty server),
is killed by Linux when the process that started it dies, even by SIGKILL, and is
stopped by `Child.stop()`, which is safe to call twice::

    server = start_server("search", lambda port: function_argv("search", port), env,
                          logs, "/health")
    try:
        ...  # server.url
    finally:
        server.stop()
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 5.0
REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    """A loopback TCP port the OS says is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` having Linux stop the child when this process dies, even by
    SIGKILL, so nothing outlives a crashed parent (None off Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return preexec


@dataclass
class Child:
    """A started process: its name, `url` once it serves one, and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""
    _log: IO[bytes] | None = field(default=None, repr=False)

    def log_tail(self, n: int = 4000) -> str:
        """The last `n` characters of its log, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL if it lingers; only while the leader
        is unreaped, so the group id cannot have been reused. Idempotent."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


C = TypeVar("C", bound=Child)


def spawn(
    name: str,
    argv: list[str],
    env: Mapping[str, str],
    log_path: Path,
    *,
    cwd: Path | None = None,
    make: Callable[..., C] = Child,  # type: ignore[assignment]
    **fields: Any,
) -> C:
    """Start `argv` in a group of its own, appending its output to `log_path`.

    Args:
        make: the `Child` (sub)class to return, given `fields` beside the usual ones.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - closed by Child.stop
    try:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
    except BaseException:
        log.close()
        raise
    return make(name, process, log_path, _log=log, **fields)


def wait_ready(child: Child, probe_url: str, timeout: float = START_TIMEOUT) -> None:
    """Wait until `probe_url` answers (any HTTP status: it is up).

    Raises:
        RuntimeError: the child exited, or did not answer within `timeout`; the
            message carries the end of its log.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise RuntimeError(
                f"{child.name} exited with {child.process.returncode} while starting:\n"
                f"{child.log_tail()}"
            )
        try:
            with urllib.request.urlopen(probe_url, timeout=2) as resp:
                resp.read()
                return
        except urllib.error.HTTPError:
            return  # it answered: it is up
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(
        f"{child.name} did not answer {probe_url} within {timeout:.0f}s:\n{child.log_tail()}"
    )


def start_server(
    name: str,
    argv_for: Callable[[int], list[str]],
    env: Mapping[str, str],
    log_for: Callable[[int], Path],
    probe: str,
    *,
    cwd: Path | None = None,
    make: Callable[..., C] = Child,  # type: ignore[assignment]
    **fields: Any,
) -> C:
    """Start a server on a free loopback port (`argv_for(port)`, logging to
    `log_for(port)`) and wait until `probe` answers; a port taken between asking
    for it and binding it is retried. Stopped again if it never answers."""
    for _ in range(3):
        port = free_port()
        child = spawn(name, argv_for(port), env, log_for(port), cwd=cwd, make=make, **fields)
        child.url = f"http://{LOOPBACK}:{port}"
        try:
            wait_ready(child, child.url + probe)
            return child
        except BaseException as e:
            child.stop()
            if not isinstance(e, RuntimeError) or "in use" not in child.log_tail():
                raise
    raise RuntimeError(f"{name}: no free port could be bound")


def function_argv(name: str, port: int, repo: Path = REPO) -> list[str]:
    """`functions/<name>/main.py` (target `name`) under functions-framework on `port`."""
    return [
        str(Path(sys.executable).with_name("functions-framework")),
        "--source", str(repo / "functions" / name / "main.py"),
        "--target", name,
        "--host", LOOPBACK,
        "--port", str(port),
    ]  # fmt: skip


@contextlib.contextmanager
def environ(values: Mapping[str, str]) -> Iterator[None]:
    """`os.environ` with `values` set until the block ends (boto3 reads credentials
    there)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
