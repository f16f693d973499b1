"""Progress bars (tqdm) for long CLI work, drawn only when stderr is a terminal:
piped or redirected, a command prints the plain lines it always printed."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import IO, Any

from tqdm import tqdm

# What each step counts.
UNITS = {"ingest": "record", "compact": "output", "gc": "object", "verify": "segment"}


class Bars:
    """A `Progress` callback: one bar per step, replaced when the step changes."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.step: str | None = None
        self.bar: Any = None

    def __call__(self, step: str, done: int, total: int) -> None:
        if step != self.step or self.bar is None:
            self.close()
            self.step = step
            self.bar = tqdm(
                total=total,
                desc=step,
                unit=UNITS.get(step, "it"),
                unit_scale=True,
                file=self.stream,
            )
        self.bar.total = total
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.step = None

    def __enter__(self) -> Bars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def terminal_bars(stream: IO[str] | None = None) -> Bars | None:
    """Bars on `stream` (stderr) if it is a terminal, else None (no bars)."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return Bars(stream) if isatty is not None and isatty() else None


@contextlib.contextmanager
def terminal_progress(stream: IO[str] | None = None) -> Iterator[Bars | None]:
    """`terminal_bars()` for the span of a block, closed however it ends."""
    bars = terminal_bars(stream)
    try:
        yield bars
    finally:
        if bars is not None:
            bars.close()
