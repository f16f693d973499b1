"""Fixtures shared by the whole suite.

Storage
    `store`          a fresh, empty store, once per backend: memory, file, s3, gcs
                     (test ids end in `[memory]`, `[file]`, `[s3]`, `[gcs]`).
    `store_url`      factory `store_url(kind) -> str`: a fresh, empty bucket or
                     folder's URL, to open with `open_store(url, read_only=...)`
                     here or in a child process (the environment points at the
                     emulators, and children inherit it).
    `moto_server`, `fake_gcs_server`
                     the session's emulators, started on first use only, and
                     stopped at the end of the session whatever happens.

Plain helpers for code outside fixtures live in `servers.py` (`make_store`,
`new_store_url`, `start_moto`, `start_fake_gcs`, `running_emulators`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from brainy.storage import ObjectStore, open_store
from servers import (
    STORE_KINDS,
    Emulator,
    emulator_env,
    new_store_url,
    start_fake_gcs,
    start_moto,
)

# The session fixture each store kind needs running, if any.
EMULATOR_FIXTURES = {"s3": "moto_server", "gcs": "fake_gcs_server"}


def _serve(
    start: Callable[[], Emulator], env_for: Callable[[Emulator], dict[str, str]]
) -> Iterator[Emulator]:
    emulator = start()
    patch = pytest.MonkeyPatch()
    try:
        for name, value in env_for(emulator).items():
            patch.setenv(name, value)
        yield emulator
    finally:
        patch.undo()
        emulator.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Emulator]:
    """A moto S3 server; `BRAINY_S3_ENDPOINT_URL` and dummy AWS keys point at it."""
    yield from _serve(start_moto, lambda emulator: emulator_env(s3=emulator))


@pytest.fixture(scope="session")
def fake_gcs_server() -> Iterator[Emulator]:
    """A fake-gcs-server; `STORAGE_EMULATOR_HOST` points at it."""
    yield from _serve(start_fake_gcs, lambda emulator: emulator_env(gcs=emulator))


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """Factory: `store_url(kind)` makes a fresh, empty store location and returns its URL.

    Starts the emulator that `kind` needs on first use.
    """

    def make(kind: str) -> str:
        if kind in EMULATOR_FIXTURES:
            request.getfixturevalue(EMULATOR_FIXTURES[kind])
        return new_store_url(kind, tmp_path)

    return make


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, store_url: Callable[[str], str]) -> Iterator[ObjectStore]:
    """A fresh, empty, writable store of each kind in turn."""
    opened = open_store(store_url(request.param))
    yield opened
    opened.close()
