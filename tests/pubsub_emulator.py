"""The Pub/Sub emulator the installed Google Cloud SDK provides, on a loopback port.

`gcloud beta emulators pubsub start` runs a Java server as its child: it starts in
its own process group, and `stop()` ends the whole group. Tests that need it skip
(with the reason) only where gcloud or its pubsub-emulator component is absent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from servers import LOOPBACK, Emulator, _die_with_parent, _wait_until_ready, free_port

PROJECT = "brainy-test"


def pubsub_missing() -> str | None:
    """Why the emulator cannot run here, or None when it can."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return "gcloud (Google Cloud SDK) is not installed"
    root = Path(os.path.realpath(gcloud)).parents[1]
    candidates = [
        root / "platform" / "pubsub-emulator",
        Path("/usr/lib/google-cloud-sdk/platform/pubsub-emulator"),
    ]
    if not any(p.exists() for p in candidates):
        return "the gcloud pubsub-emulator component is not installed"
    if shutil.which("java") is None:
        return "the Pub/Sub emulator needs java, which is not installed"
    return None


class PubSubEmulator(Emulator):
    """A running emulator; `host` is what `PUBSUB_EMULATOR_HOST` must say."""

    @property
    def host(self) -> str:
        return self.endpoint.removeprefix("http://")

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
        super().stop()


def start_pubsub() -> PubSubEmulator:
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="brainy-pubsub-"))
    (workdir / "data").mkdir()
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed by Emulator.stop
    argv = [
        "gcloud", "beta", "emulators", "pubsub", "start",
        f"--host-port={LOOPBACK}:{port}", f"--project={PROJECT}",
        f"--data-dir={workdir / 'data'}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUBSUB_")}
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # java is its child: stop() ends the group
        preexec_fn=_die_with_parent(),
    )
    emulator = PubSubEmulator("pubsub", f"http://{LOOPBACK}:{port}", process, workdir, log)
    try:
        _wait_until_ready(emulator, emulator.endpoint + "/")
    except BaseException:
        emulator.stop()
        raise
    return emulator
