"""Index-updated events: published after each manifest commit, received by search
instances so they serve the new version at once instead of at their next refresh.

After a commit lands, `Broadcaster.committed` (the `Manifests` commit hook) queues
an `IndexUpdated`; a background thread sends it, as a CloudEvent of type
`dev.brainy.index.updated`, to every configured sink: an SNS topic (the structured
CloudEvent as the message), a Pub/Sub topic (binary: the data as the message, the
attributes `ce-*`, as the CloudEvents Pub/Sub binding has it) or a webhook (an HTTP
POST of a binary CloudEvent). Publishing never blocks or fails a commit: a full
queue drops the event, a failing sink is logged; both are counted. A lost event
only delays freshness to the reader's refresh interval.

A search instance accepts the same event in every form a platform delivers it
(`parse_delivery`): a binary or structured CloudEvent, a Pub/Sub push envelope of
one, or an SNS HTTP notification carrying one (and SNS's subscription
confirmation, confirmed by a GET of its SubscribeURL).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import queue
import re
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlparse

from brainy.core.config import ConfigError, EventSink, validate_name
from brainy.core.errors import BrainyError, InvalidInput, parse_json_object
from brainy.table.manifest import Manifest

log = logging.getLogger(__name__)

INDEX_UPDATED = "dev.brainy.index.updated"
SPEC_VERSION = "1.0"
_DATA_FIELDS = ("collection", "version", "segments_added", "segments_removed", "committed_by")
# SNS's own endpoints; a SubscribeURL elsewhere is only followed when it is the
# configured SNS endpoint (moto, LocalStack), so a forged body cannot make an
# instance fetch arbitrary URLs.
_AWS_SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")


@dataclass(frozen=True)
class IndexUpdated:
    """One commit: the collection, its new version, the segments it added and
    removed (ids), and the writer that committed it."""

    collection: str
    version: int
    segments_added: tuple[str, ...] = ()
    segments_removed: tuple[str, ...] = ()
    committed_by: str = ""

    @classmethod
    def between(cls, parent: Manifest, new: Manifest) -> IndexUpdated:
        """What the commit of `new` on `parent` changed."""
        before = {ref.id for ref in parent.segments}
        after = {ref.id for ref in new.segments}
        return cls(
            new.collection,
            new.version,
            tuple(ref.id for ref in new.segments if ref.id not in before),
            tuple(ref.id for ref in parent.segments if ref.id not in after),
            new.committed_by,
        )

    def data(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "version": self.version,
            "segments_added": list(self.segments_added),
            "segments_removed": list(self.segments_removed),
            "committed_by": self.committed_by,
        }

    def attributes(self, source: str) -> dict[str, str]:
        """The CloudEvent's context attributes (the id is the same for every sink,
        so a receiver can tell one commit's copies apart from two commits)."""
        return {
            "specversion": SPEC_VERSION,
            "type": INDEX_UPDATED,
            "source": source,
            "id": f"{self.collection}/{self.version}/{uuid.uuid4().hex[:12]}",
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "subject": self.collection,
            "datacontenttype": "application/json",
        }

    @classmethod
    def from_data(cls, data: Any, where: str = "data") -> IndexUpdated:
        """Validate an event's data; raises `InvalidInput` naming the field."""
        if isinstance(data, (bytes, str)):
            try:
                data = json.loads(data)
            except ValueError:
                raise InvalidInput(where, "expected JSON event data") from None
        if not isinstance(data, Mapping):
            raise InvalidInput(where, "expected an object with collection and version")
        try:
            collection = validate_name(data.get("collection"), f"{where}.collection")
        except ConfigError as e:
            raise InvalidInput(f"{where}.collection", str(e).partition(": ")[2]) from None
        version = data.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InvalidInput(f"{where}.version", f"expected a positive integer, got {version!r}")
        lists = {}
        for name in ("segments_added", "segments_removed"):
            value = data.get(name, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InvalidInput(f"{where}.{name}", "expected a list of segment ids")
            lists[name] = tuple(value)
        committed_by = data.get("committed_by", "")
        if not isinstance(committed_by, str):
            raise InvalidInput(f"{where}.committed_by", f"expected a string, got {committed_by!r}")
        return cls(collection, version, committed_by=committed_by, **lists)


# ------------------------------------------------------------------ sinks


class Sink(Protocol):
    """Sends one event somewhere; raises on failure (the broadcaster counts it)."""

    name: str

    def send(self, event: IndexUpdated, attributes: Mapping[str, str]) -> None: ...


def structured(event: IndexUpdated, attributes: Mapping[str, str]) -> bytes:
    """The structured-mode CloudEvent (JSON format) of `event`."""
    return json.dumps({**attributes, "data": event.data()}, separators=(",", ":")).encode()


class WebhookSink:
    """An HTTP POST of the binary-mode CloudEvent: `ce-*` headers, the data as body."""

    name = "webhook"

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout

    def send(self, event: IndexUpdated, attributes: Mapping[str, str]) -> None:
        headers = {f"ce-{k}": v for k, v in attributes.items() if k != "datacontenttype"}
        headers["Content-Type"] = attributes["datacontenttype"]
        body = json.dumps(event.data(), separators=(",", ":")).encode()
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as resp:
            resp.read()


class SnsSink:
    """SNS Publish of the structured CloudEvent (subscribers over HTTP, SQS or
    Lambda receive it as the notification's Message)."""

    name = "sns"

    def __init__(self, topic_arn: str, endpoint_url: str | None, region: str | None) -> None:
        import boto3

        self.topic_arn = topic_arn
        self._client = boto3.client(
            "sns", endpoint_url=endpoint_url, region_name=region or topic_arn.split(":")[3]
        )

    def send(self, event: IndexUpdated, attributes: Mapping[str, str]) -> None:
        self._client.publish(
            TopicArn=self.topic_arn,
            Message=structured(event, attributes).decode(),
            MessageAttributes={
                "ce-type": {"DataType": "String", "StringValue": attributes["type"]},
                "collection": {"DataType": "String", "StringValue": event.collection},
            },
        )


class PubSubSink:
    """Pub/Sub publish in the CloudEvents binary binding: the data as the message,
    the context attributes as `ce-*` message attributes. `PUBSUB_EMULATOR_HOST`
    points the client at the emulator."""

    name = "pubsub"

    def __init__(self, topic: str, timeout: float) -> None:
        from google.cloud import pubsub_v1

        self.topic = topic
        self.timeout = timeout
        self._client = pubsub_v1.PublisherClient()

    def send(self, event: IndexUpdated, attributes: Mapping[str, str]) -> None:
        attrs = {f"ce-{k}": v for k, v in attributes.items() if k != "datacontenttype"}
        attrs["content-type"] = attributes["datacontenttype"]
        data = json.dumps(event.data(), separators=(",", ":")).encode()
        self._client.publish(self.topic, data, **attrs).result(timeout=self.timeout)


def open_sink(spec: EventSink, key: str, sns_endpoint_url: str | None = None) -> Sink:
    """The sink `spec` describes. Raises `ConfigError` naming `key` when its client
    library is missing (checked at start-up, not at the first commit)."""
    if spec.type == "webhook":
        return WebhookSink(spec.target, spec.timeout)
    if spec.type == "sns":
        return SnsSink(spec.target, spec.endpoint_url or sns_endpoint_url, spec.region)
    try:
        return PubSubSink(spec.target, spec.timeout)
    except ImportError:
        raise ConfigError(
            f"{key}.type: a pubsub sink needs google-cloud-pubsub (pip install 'brainy[pubsub]')"
        ) from None


class Broadcaster:
    """Sends index-updated events to the sinks from one background thread.

    Args:
        sinks: where every event goes.
        source: the CloudEvent source: which instance committed.
        queue_size: events waiting beyond this are dropped (and counted).
        count: called with (sink name, outcome) for each event and sink; outcome
            is "ok", "error" or "dropped".
    """

    def __init__(
        self,
        sinks: Sequence[Sink],
        source: str,
        queue_size: int,
        count: Callable[[str, str], None],
    ) -> None:
        self.sinks = list(sinks)
        self.source = source
        self.count = count
        self._queue: queue.Queue[IndexUpdated | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # Events queued and events handled (sent or failed), for `flush`.
        self._progress = threading.Condition()
        self._queued = 0
        self._handled = 0

    def committed(self, parent: Manifest, new: Manifest) -> None:
        """The `Manifests` commit hook: queue the event of this commit."""
        self.publish(IndexUpdated.between(parent, new))

    def publish(self, event: IndexUpdated) -> None:
        """Queue `event`; never blocks (a full queue drops it)."""
        self._start()
        try:
            with self._progress:
                self._queue.put_nowait(event)
                self._queued += 1
        except queue.Full:
            log.warning(
                "index-updated %s v%d dropped: %d events already wait for the sinks",
                event.collection, event.version, self._queue.maxsize,
            )  # fmt: skip
            for sink in self.sinks:
                self.count(sink.name, "dropped")

    def flush(self, timeout: float) -> bool:
        """Wait until every event queued so far has been sent (or has failed), at
        most `timeout` seconds; False if some are still waiting."""
        with self._progress:
            target = self._queued
            return self._progress.wait_for(lambda: self._handled >= target, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (up to `timeout`), then stop the thread."""
        if self._thread is None:
            return
        self.flush(timeout)
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            return  # the thread is a daemon: it ends with the process
        self._thread.join(timeout)

    def _start(self) -> None:
        # Started at the first event, in the process that commits (a function's
        # server forks its workers after importing it).
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="brainy-broadcast", daemon=True
                    )
                    self._thread.start()

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            try:
                if event is None:
                    return
                attributes = event.attributes(self.source)
                for sink in self.sinks:
                    try:
                        sink.send(event, attributes)
                        self.count(sink.name, "ok")
                    except Exception as e:
                        log.warning(
                            "index-updated %s v%d not sent to %s: %s: %s",
                            event.collection, event.version, sink.name, type(e).__name__, e,
                        )  # fmt: skip
                        self.count(sink.name, "error")
            finally:
                self._queue.task_done()
                if event is not None:
                    with self._progress:
                        self._handled += 1
                        self._progress.notify_all()


# --------------------------------------------------------------- receiving


@dataclass(frozen=True)
class SnsConfirmation:
    """SNS asks an HTTP subscriber to confirm: a GET of `subscribe_url` does."""

    topic_arn: str
    subscribe_url: str


@dataclass(frozen=True)
class Ignored:
    """A delivery acknowledged without effect (SNS's unsubscribe confirmation)."""

    reason: str


Delivery = IndexUpdated | SnsConfirmation | Ignored


def parse_delivery(headers: Mapping[str, str], body: bytes) -> Delivery:
    """The index-updated event (or SNS request) in an HTTP delivery, whatever its
    form (see the module doc). Raises `InvalidInput` naming the malformed field."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if "ce-type" in lowered:
        _check_type(lowered["ce-type"], "ce-type")
        _check_required(lowered, "ce-", "header")
        return IndexUpdated.from_data(body, "body")
    payload = parse_json_object(body)
    if "specversion" in payload:
        return _from_structured(payload, "body")
    if "message" in payload:
        return _from_pubsub(payload["message"])
    if "Type" in payload:
        return _from_sns(payload)
    raise InvalidInput(
        "body",
        "expected a CloudEvent (binary or structured), a Pub/Sub push envelope or an "
        "SNS notification",
    )


def _check_type(value: Any, field: str) -> None:
    if value != INDEX_UPDATED:
        raise InvalidInput(field, f"expected {INDEX_UPDATED!r}, got {value!r}")


def _check_required(attributes: Mapping[str, Any], prefix: str, where: str) -> None:
    for name in ("specversion", "id", "source"):
        if not attributes.get(prefix + name):
            raise InvalidInput(f"{prefix}{name}", f"required CloudEvent {where}")


def _from_structured(event: Any, where: str) -> IndexUpdated:
    if not isinstance(event, Mapping):
        raise InvalidInput(where, "expected a structured CloudEvent (a JSON object)")
    _check_required(event, "", where)
    if event.get("specversion") != SPEC_VERSION:
        raise InvalidInput(
            f"{where}.specversion", f"expected {SPEC_VERSION!r}, got {event.get('specversion')!r}"
        )
    _check_type(event.get("type"), f"{where}.type")
    if "data" not in event and "data_base64" in event:
        return IndexUpdated.from_data(_b64(event["data_base64"], f"{where}.data_base64"))
    return IndexUpdated.from_data(event.get("data"), f"{where}.data")


def _from_pubsub(message: Any) -> IndexUpdated:
    if not isinstance(message, Mapping):
        raise InvalidInput("message", "expected a Pub/Sub message object")
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        raise InvalidInput("message.attributes", "expected an object")
    data = _b64(message.get("data"), "message.data")
    if "ce-type" in attributes:  # the binary binding
        _check_type(attributes["ce-type"], "message.attributes.ce-type")
        return IndexUpdated.from_data(data, "message.data")
    try:
        event = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("message.data", "expected a JSON CloudEvent") from None
    return _from_structured(event, "message.data")


def _from_sns(payload: Mapping[str, Any]) -> Delivery:
    kind = payload.get("Type")
    if kind == "SubscriptionConfirmation":
        url = payload.get("SubscribeURL")
        topic = payload.get("TopicArn")
        if not isinstance(url, str) or not url:
            raise InvalidInput("SubscribeURL", "required in a subscription confirmation")
        if not isinstance(topic, str) or not topic:
            raise InvalidInput("TopicArn", "required in a subscription confirmation")
        return SnsConfirmation(topic, url)
    if kind == "UnsubscribeConfirmation":
        return Ignored("unsubscribe confirmation")
    if kind != "Notification":
        raise InvalidInput(
            "Type",
            f"expected Notification, SubscriptionConfirmation or UnsubscribeConfirmation, "
            f"got {kind!r}",
        )
    message = payload.get("Message")
    if not isinstance(message, str):
        raise InvalidInput("Message", "required: the CloudEvent, as a JSON string")
    try:
        event = json.loads(message)
    except ValueError:
        raise InvalidInput("Message", "expected a JSON CloudEvent") from None
    return _from_structured(event, "Message")


def _b64(value: Any, field: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise InvalidInput(field, "required: base64-encoded data")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(field, "expected base64") from None


class SubscriptionNotConfirmed(BrainyError):
    """The GET of an SNS SubscribeURL failed (SNS can resend the confirmation)."""

    status = 502
    code = "subscription"


def confirm_subscription(
    confirmation: SnsConfirmation, endpoints: Sequence[str], timeout: float = 10.0
) -> str:
    """Confirm an SNS HTTP subscription by a GET of its SubscribeURL: only an AWS
    SNS endpoint, or one of `endpoints` (the configured SNS endpoints). Returns the
    subscription ARN SNS answers with ("" if the answer carries none)."""
    url = confirmation.subscribe_url
    parsed = urlparse(url)
    trusted = (parsed.scheme == "https" and _AWS_SNS_HOST.match(parsed.hostname or "")) or any(
        _same_origin(url, endpoint) for endpoint in endpoints
    )
    if not trusted:
        raise InvalidInput(
            "SubscribeURL",
            f"{url!r} is not an SNS endpoint (https://sns.<region>.amazonaws.com or the "
            "configured SNS endpoint_url)",
        )
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            answer = resp.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:
        raise SubscriptionNotConfirmed("SubscribeURL", f"GET {url} failed: {e}") from None
    found = re.search(r"<SubscriptionArn>([^<]+)</SubscriptionArn>", answer)
    return found.group(1) if found else ""


def _same_origin(url: str, endpoint: str) -> bool:
    a, b = urlparse(url), urlparse(endpoint)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)
