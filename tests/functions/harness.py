"""Brainy's functions as real functions-framework servers, and the events that wake them.

A `FunctionServer` is one `functions-framework --source functions/<name>/main.py`
process on a loopback port the OS hands out, logging to a file. A `Deployment` is
the three of them (ingest, indexer, search) sharing one bucket, with helpers that
talk to them over HTTP the way a client and the cloud platform would.

The event builders produce exactly what each platform delivers: a raw S3
notification body (keys URL-encoded), the CloudEvents AWS S3 adapter's form, a
GCS `object.v1.finalized` CloudEvent (binary or structured) and a Pub/Sub push
envelope of a GCS notification.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlencode, urlparse

from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from prometheus_client.parser import text_string_to_metric_families

from brainy.entry.processes import LOOPBACK, function_argv, start_server
from brainy.storage import ObjectStore, open_store
from brainy.table.manifest import Manifests
from servers import Emulator

REPO = Path(__file__).resolve().parents[2]
COLLECTION = "docs"
DIMENSION = 8
CONFIG = {"collections": {COLLECTION: {"dimension": DIMENSION, "metric": "angular"}}}

# Settings every deployment's functions run with: a refresh interval long enough
# that a burst of searches fits inside one, a short min_version wait, a small body
# limit so "too large" is cheap to provoke.
REFRESH_INTERVAL = 2.0
MIN_VERSION_TIMEOUT = 1.0
MAX_BODY_SIZE = 64 * 1024

# How each platform delivers "object created" to the indexer; the first is the default.
DELIVERY_FORMS: dict[str, tuple[str, ...]] = {
    "file": ("gcs-binary",),
    "s3": ("s3-notification", "s3-cloudevent"),
    "gcs": ("gcs-structured", "gcs-binary", "pubsub"),
}

# Servers not yet stopped, so a failing test can show their logs.
RUNNING: list[FunctionServer] = []


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, headers and body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        """The `error` object of a 4xx/5xx JSON body."""
        return self.json()["error"]

    def __str__(self) -> str:
        return f"{self.status} {self.body[:2000].decode(errors='replace')}"


def http(
    method: str,
    url: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Reply:
    """Send one request; any status comes back as a `Reply`, never as an exception."""
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return Reply(resp.status, dict(resp.headers), resp.read())
    except urllib.error.HTTPError as e:
        with e:
            return Reply(e.code, dict(e.headers), e.read())


def function_env(
    store_url: str, emulator_env: Mapping[str, str], **settings: str
) -> dict[str, str]:
    """The environment of a function process: this one's, minus any Brainy, AWS or GCS
    emulator settings it happens to carry, plus the emulators' and `settings`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BRAINY_", "AWS_")) and k != "STORAGE_EMULATOR_HOST"
    }
    env.update(emulator_env)
    env["BRAINY_STORE"] = store_url
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env


@dataclass
class FunctionServer(Emulator):
    """One function served by functions-framework, in its own process group.

    `endpoint` (also `url`) is its base URL; its log (stderr and stdout) is in
    `workdir`, which `stop()` removes.
    """

    @classmethod
    def start(cls, name: str, env: Mapping[str, str], parent: Path) -> FunctionServer:
        """Serve `functions/<name>/main.py` (target `name`) and wait until `GET /health`
        answers. A port taken between asking for it and binding it is retried."""
        parent.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))
        server = start_server(
            name,
            functools.partial(function_argv, name, repo=REPO),
            env,
            lambda port: workdir / f"server-{port}.log",
            "/health",
            cwd=REPO,
            make=cls,
            workdir=workdir,
        )
        RUNNING.append(server)
        return server

    def stop(self) -> None:
        """Stop master and worker (gunicorn's); idempotent."""
        super().stop()
        if self in RUNNING:
            RUNNING.remove(self)

    # --------------------------------------------------------------- requests

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Reply:
        headers = dict(headers or {})
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers.setdefault("Content-Type", "application/json")
        url = self.url + path + (f"?{urlencode(params)}" if params else "")
        return http(method, url, data, headers)

    def post(self, path: str, json_body: Any = None, **kw: Any) -> Reply:
        return self.request("POST", path, json_body=json_body, **kw)

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def store_requests(self) -> Counter[str]:
        """`brainy_object_store_requests_total` by kind, read from `GET /metrics`."""
        reply = self.get("/metrics")
        assert reply.status == 200, str(reply)
        counts: Counter[str] = Counter()
        for family in text_string_to_metric_families(reply.body.decode()):
            for sample in family.samples:
                if sample.name == "brainy_object_store_requests_total":
                    counts[sample.labels["kind"]] = int(sample.value)
        return counts


class Launcher:
    """Starts extra function servers on a store; stops them all at once."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[FunctionServer] = []

    def __call__(
        self,
        name: str,
        store_url: str,
        emulators: Mapping[str, str] | None = None,
        **settings: str,
    ) -> FunctionServer:
        """Start function `name` on `store_url`; `emulators` is `servers.emulator_env(...)`
        of the emulator the store lives on, `settings` more environment variables."""
        settings.setdefault("BRAINY_CACHE_DIR", str(self.workdir / f"cache-{len(self.started)}"))
        env = function_env(store_url, emulators or {}, **settings)
        server = FunctionServer.start(name, env, self.workdir / "servers")
        self.started.append(server)
        return server

    def stop(self) -> None:
        for server in self.started:
            server.stop()


# ------------------------------------------------------------------ events


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def s3_record(bucket: str, key: str, event_name: str = "ObjectCreated:Put") -> dict[str, Any]:
    """One record of an S3 event notification (structure 2.1); the key URL-encoded
    as S3 sends it."""
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": _now(),
        "eventName": event_name,
        "userIdentity": {"principalId": "AWS:BRAINYTEST"},
        "requestParameters": {"sourceIPAddress": LOOPBACK},
        "responseElements": {"x-amz-request-id": uuid.uuid4().hex[:16], "x-amz-id-2": "t"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "brainy-indexer",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": quote_plus(key), "size": 1, "sequencer": "0A1B2C3D4E5F678901"},
        },
    }


def s3_notification(bucket: str, keys: Sequence[str]) -> dict[str, Any]:
    """A raw S3 notification body naming every key of `keys`."""
    return {"Records": [s3_record(bucket, key) for key in keys]}


def s3_test_event(bucket: str) -> dict[str, Any]:
    """What S3 sends once when notifications are configured on a bucket."""
    return {
        "Service": "Amazon S3",
        "Event": "s3:TestEvent",
        "Time": _now(),
        "Bucket": bucket,
        "RequestId": uuid.uuid4().hex[:16],
        "HostId": "t",
    }


def s3_cloudevent(bucket: str, key: str) -> CloudEvent:
    """An S3 notification mapped as in the CloudEvents AWS S3 adapter."""
    record = s3_record(bucket, key)
    ids = record["responseElements"]
    return CloudEvent(
        {
            "type": f"com.amazonaws.s3.{record['eventName']}",
            "source": f"{record['eventSource']}.{record['awsRegion']}.{bucket}",
            "id": f"{ids['x-amz-request-id']}.{ids['x-amz-id-2']}",
            "subject": record["s3"]["object"]["key"],
            "time": record["eventTime"],
            "datacontenttype": "application/json",
        },
        record,
    )


def gcs_object(bucket: str, name: str, generation: str) -> dict[str, Any]:
    """A GCS object resource, as finalized events and notifications carry it."""
    return {
        "kind": "storage#object",
        "id": f"{bucket}/{name}/{generation}",
        "name": name,
        "bucket": bucket,
        "generation": generation,
        "metageneration": "1",
        "contentType": "application/octet-stream",
        "size": "1",
        "timeCreated": _now(),
    }


def gcs_cloudevent(bucket: str, name: str, generation: str) -> CloudEvent:
    """`google.cloud.storage.object.v1.finalized`, as Eventarc delivers it."""
    return CloudEvent(
        {
            "type": "google.cloud.storage.object.v1.finalized",
            "source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
            "subject": f"objects/{name}",
            "datacontenttype": "application/json",
        },
        gcs_object(bucket, name, generation),
    )


def pubsub_push(bucket: str, name: str, generation: str, event_type: str = "OBJECT_FINALIZE"):
    """A Pub/Sub push envelope of a GCS notification (payload format JSON_API_V1)."""
    resource = json.dumps(gcs_object(bucket, name, generation)).encode()
    return {
        "message": {
            "attributes": {
                "bucketId": bucket,
                "objectId": name,
                "objectGeneration": generation,
                "eventType": event_type,
                "eventTime": _now(),
                "notificationConfig": f"projects/_/buckets/{bucket}/notificationConfigs/1",
                "payloadFormat": "JSON_API_V1",
            },
            "data": base64.b64encode(resource).decode(),
            "messageId": str(uuid.uuid4().int)[:16],
            "publishTime": _now(),
        },
        "subscription": "projects/brainy-local/subscriptions/indexer",
    }


def _json_request(body: Any) -> tuple[dict[str, str], bytes]:
    return {"Content-Type": "application/json"}, json.dumps(body).encode()


def event_request(
    form: str, bucket: str, names: Sequence[str], generation: str = "1"
) -> tuple[dict[str, str], bytes]:
    """(headers, body) of the delivery `form` naming the objects `names`.

    Only an S3 notification body carries several objects; every other form names one.
    """
    if form == "s3-notification":
        return _json_request(s3_notification(bucket, names))
    (name,) = names
    if form == "s3-cloudevent":
        return to_binary(s3_cloudevent(bucket, name))
    if form == "gcs-binary":
        return to_binary(gcs_cloudevent(bucket, name, generation))
    if form == "gcs-structured":
        return to_structured(gcs_cloudevent(bucket, name, generation))
    if form == "pubsub":
        return _json_request(pubsub_push(bucket, name, generation))
    raise ValueError(f"unknown delivery form {form!r}")


# -------------------------------------------------------------- deployment


@dataclass
class Deployment:
    """ingest, indexer and search sharing one bucket, and the bucket itself.

    Attributes:
        kind: "file", "s3" or "gcs".
        store_url: the `BRAINY_STORE` of every function.
        store: the same store opened in the test process, to look inside the bucket.
        bucket: the bucket name events carry.
        prefix: where the store lives inside the bucket ("" for none).
    """

    kind: str
    store_url: str
    store: ObjectStore
    bucket: str
    prefix: str
    ingest: FunctionServer
    indexer: FunctionServer
    search: FunctionServer
    workdir: Path

    @property
    def servers(self) -> list[FunctionServer]:
        return [self.ingest, self.indexer, self.search]

    @property
    def forms(self) -> tuple[str, ...]:
        return DELIVERY_FORMS[self.kind]

    def object_name(self, key: str) -> str:
        """The full object name in the bucket of a store key, as events carry it."""
        return f"{self.prefix}/{key}" if self.prefix else key

    def wal_keys(self, collection: str = COLLECTION) -> list[str]:
        return [info.key for info in self.store.list(f"{collection}/wal/")]

    def version(self, collection: str = COLLECTION) -> int:
        """The newest committed manifest version, read from the bucket."""
        latest = Manifests(self.store, collection).latest()
        return latest.version if latest else 0

    def put_records(self, records: list[dict[str, Any]], **kw: Any) -> str:
        """Ingest `records`; returns the batch key (asserting the 202)."""
        reply = self.ingest.post("/ingest", {"collection": COLLECTION, "records": records}, **kw)
        assert reply.status == 202, str(reply)
        return reply.json()["batch"]

    def delete_ids(self, ids: list[str]) -> str:
        reply = self.ingest.post("/ingest", {"collection": COLLECTION, "deletes": ids})
        assert reply.status == 202, str(reply)
        return reply.json()["batch"]

    def deliver(self, *keys: str, form: str | None = None, bucket: str | None = None) -> Reply:
        """Tell the indexer the batch objects `keys` were created, as the platform would."""
        generation = self.store.head(keys[0]).etag if self.kind == "gcs" else "1"
        names = [self.object_name(k) for k in keys]
        return self.deliver_names(names, form=form, bucket=bucket, generation=generation)

    def deliver_names(
        self,
        names: Sequence[str],
        *,
        form: str | None = None,
        bucket: str | None = None,
        generation: str = "1",
    ) -> Reply:
        """Tell the indexer the objects with these full names (in the bucket) were created."""
        headers, body = event_request(
            form or self.forms[0], self.bucket if bucket is None else bucket, names, generation
        )
        return self.indexer.post("/", data=body, headers=headers)

    def index(self, key: str, form: str | None = None) -> int:
        """Deliver the event of one batch; returns the version it was committed in."""
        reply = self.deliver(key, form=form)
        assert reply.status == 200, str(reply)
        (result,) = reply.json()["results"]
        assert result["status"] == "applied", result
        return int(result["version"])

    def query(self, vector: Sequence[float], **fields: Any) -> Reply:
        return self.search.post(
            "/search", {"collection": COLLECTION, "vector": list(vector), **fields}
        )

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.store.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_deployment(
    kind: str, store_url: str, emulator_env: Mapping[str, str], workdir: Path
) -> Deployment:
    """Declare the `docs` collection in a fresh bucket, then start the three functions."""
    store = open_store(
        store_url,
        endpoint_url=emulator_env.get("BRAINY_S3_ENDPOINT_URL"),
        region=emulator_env.get("BRAINY_S3_REGION"),
    )
    store.put("_brainy/config.json", json.dumps(CONFIG).encode())
    settings = {
        "BRAINY_REFRESH_INTERVAL": str(REFRESH_INTERVAL),
        "BRAINY_MIN_VERSION_TIMEOUT": str(MIN_VERSION_TIMEOUT),
        "BRAINY_MAX_BODY_SIZE": str(MAX_BODY_SIZE),
    }
    started: list[FunctionServer] = []
    try:
        for name in ("ingest", "indexer", "search"):
            env = function_env(
                store_url,
                emulator_env,
                BRAINY_CACHE_DIR=str(workdir / f"cache-{name}"),
                BRAINY_INSTANCE_ID=f"{name}-{kind}",
                **settings,
            )
            started.append(FunctionServer.start(name, env, workdir / "servers"))
    except BaseException:
        for server in started:
            server.stop()
        store.close()
        raise
    bucket = urlparse(store_url).netloc if kind in ("s3", "gcs") else "local"
    ingest, indexer, search = started
    return Deployment(
        kind, store_url, store, bucket, store.prefix, ingest, indexer, search, workdir
    )
