"""Fixtures that run the functions as real servers (see `harness.py`).

    `deployment`            ingest + indexer + search on one bucket, once per backend
                            for the whole session: `file`, `s3` (moto), `gcs`
                            (fake-gcs-server); test ids end in `[file]`, `[s3]`, `[gcs]`.
    `file_deployment`, `s3_deployment`, `gcs_deployment`
                            the same servers, for tests about one platform's events.
    `launch`                factory for extra servers with their own settings
                            (`launch("search", store_url, BRAINY_MODE="write-only")`),
                            stopped at the end of the module.
    `file_store_url`        a fresh local folder with the `docs` collection, per module.

A failing test shows the logs (stderr and stdout) of the servers it used.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from harness import CONFIG, RUNNING, Deployment, FunctionServer, Launcher, start_deployment

from brainy.storage import open_store
from servers import Emulator, emulator_env, new_store_url

# The S3 store lives under a prefix that URL-encoding changes (a space and a '+'), so
# that only an indexer that decodes notification keys finds its batches.
S3_PREFIX = "brainy data+1"


def _deploy(
    kind: str, tmp_path_factory: pytest.TempPathFactory, env: dict[str, str], url: str
) -> Iterator[Deployment]:
    deployment = start_deployment(kind, url, env, tmp_path_factory.mktemp(f"deploy-{kind}"))
    try:
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture(scope="session")
def file_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    url = new_store_url("file", tmp_path_factory.mktemp("bucket-file"))
    yield from _deploy("file", tmp_path_factory, {}, url)


@pytest.fixture(scope="session")
def s3_deployment(
    moto_server: Emulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    bucket_url = new_store_url("s3", tmp_path_factory.getbasetemp())
    url = bucket_url.rsplit("/", 1)[0] + "/" + S3_PREFIX
    yield from _deploy("s3", tmp_path_factory, emulator_env(s3=moto_server), url)


@pytest.fixture(scope="session")
def gcs_deployment(
    fake_gcs_server: Emulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    url = new_store_url("gcs", tmp_path_factory.getbasetemp())
    yield from _deploy("gcs", tmp_path_factory, emulator_env(gcs=fake_gcs_server), url)


@pytest.fixture(scope="session", params=["file", "s3", "gcs"])
def deployment(request: pytest.FixtureRequest) -> Deployment:
    """The functions on each backend in turn (started once per session per backend)."""
    return request.getfixturevalue(f"{request.param}_deployment")


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """Factory for function servers on a local-folder store, stopped after the module."""
    launcher = Launcher(tmp_path_factory.mktemp("launch"))
    try:
        yield launcher
    finally:
        launcher.stop()


@pytest.fixture(scope="module")
def file_store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh local-folder store with the `docs` collection declared."""
    url = new_store_url("file", tmp_path_factory.mktemp("bucket"))
    store = open_store(url)
    store.put("_brainy/config.json", json.dumps(CONFIG).encode())
    store.close()
    return url


def _servers_of(item: pytest.Item) -> list[FunctionServer]:
    found: list[FunctionServer] = []
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, FunctionServer):
            found.append(value)
        elif isinstance(value, Deployment):
            found += value.servers
        elif isinstance(value, Launcher):
            found += value.started
    return found or list(RUNNING)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    if report.failed:
        for server in _servers_of(item):
            report.sections.append((f"{server.name} at {server.url} log", server.log_tail()))
    return report
