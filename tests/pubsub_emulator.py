"""The Pub/Sub emulator the installed Google Cloud SDK provides, on a loopback port.

`gcloud beta emulators pubsub start` runs a Java server as its child: it starts in
its own process group, and `stop()` ends the whole group. Tests that need it skip
(with the reason) only where gcloud or its pubsub-emulator component is absent.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from brainy.entry.processes import LOOPBACK, start_server
from servers import Emulator

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


def start_pubsub() -> PubSubEmulator:
    workdir = Path(tempfile.mkdtemp(prefix="brainy-pubsub-"))
    (workdir / "data").mkdir()

    def argv(port: int) -> list[str]:
        return [
            "gcloud", "beta", "emulators", "pubsub", "start",
            f"--host-port={LOOPBACK}:{port}", f"--project={PROJECT}",
            f"--data-dir={workdir / 'data'}",
        ]  # fmt: skip

    # java is gcloud's child: the group the emulator runs in is stopped whole.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUBSUB_")}
    return start_server(
        "pubsub", argv, env, lambda _: workdir / "server.log", "/",
        make=PubSubEmulator, workdir=workdir,
    )  # fmt: skip
