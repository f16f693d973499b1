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
import functools
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from brainy.entry.processes import LOOPBACK, Child, function_argv, start_server

REPO = Path(__file__).resolve().parents[1]
__all__ = ["LOOPBACK", "REPO", "Function", "serve"]


@dataclass
class Function(Child):
    """A running function: its base `url`, `port`, process and log file."""

    @property
    def port(self) -> int:
        return int(self.url.rpartition(":")[2])

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
    full = {k: v for k, v in os.environ.items() if not k.startswith(("BRAINY_", "AWS_"))}
    if repo != REPO:
        full["PYTHONPATH"] = str(repo / "layers")
    full.update(env)
    fn = start_server(
        name,
        functools.partial(function_argv, name, repo=repo),
        full,
        lambda port: workdir / f"{name}-{port}.log",
        "/health",
        cwd=repo,
        make=Function,
    )
    try:
        yield fn
    finally:
        fn.stop()
