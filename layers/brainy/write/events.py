"""Object-created events, in every shape a platform delivers them (DESIGN §7):

* a CloudEvent `google.cloud.storage.object.v1.finalized` (data: bucket, name, ...);
* a CloudEvent from the CloudEvents AWS S3 adapter (`com.amazonaws.s3.ObjectCreated:*`,
  subject = the key);
* a raw S3 notification body (`Records`, URL-encoded keys, `s3:TestEvent`);
* a Pub/Sub push envelope carrying a GCS notification;
* an EventBridge "Object Created" event.

Each becomes a list of `ObjectCreated(bucket, key)`; anything that is not an
object-created notification yields nothing (and is acknowledged).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from brainy.core.errors import InvalidInput, parse_json

GCS_FINALIZED = "google.cloud.storage.object.v1.finalized"
S3_CREATED_PREFIX = "com.amazonaws.s3.ObjectCreated:"


@dataclass(frozen=True)
class ObjectCreated:
    bucket: str
    key: str


def from_cloudevent(ce_type: str, subject: str | None, data: Any) -> list[ObjectCreated]:
    """Keys from a CloudEvent's type, subject and data."""
    if ce_type == GCS_FINALIZED:
        data = _as_mapping(data)
        if "name" not in data:
            raise InvalidInput("data.name", "a storage finalized event must name the object")
        return [ObjectCreated(str(data.get("bucket", "")), str(data["name"]))]
    if ce_type.startswith(S3_CREATED_PREFIX):
        data = _as_mapping(data) if data else {}
        s3 = data.get("s3") if isinstance(data, Mapping) else None
        if isinstance(s3, Mapping):
            return _from_s3_record(data)
        if not subject:
            raise InvalidInput("subject", "an S3 object-created CloudEvent must carry the key")
        bucket = data.get("bucket", {}) if isinstance(data, Mapping) else {}
        name = bucket.get("name", "") if isinstance(bucket, Mapping) else str(bucket)
        return [ObjectCreated(name, subject)]
    return []


def from_json_body(body: Any) -> list[ObjectCreated]:
    """Keys from a JSON body that is not a CloudEvent: S3, Pub/Sub or EventBridge."""
    if not isinstance(body, Mapping):
        raise InvalidInput("body", "expected a JSON object")
    if body.get("Event") == "s3:TestEvent":
        return []
    if "Records" in body:
        records = body["Records"]
        if not isinstance(records, list):
            raise InvalidInput("Records", "expected a list")
        out: list[ObjectCreated] = []
        for rec in records:
            if isinstance(rec, Mapping) and str(rec.get("eventName", "")).startswith(
                "ObjectCreated"
            ):
                out += _from_s3_record(rec)
        return out
    if "message" in body and isinstance(body["message"], Mapping):
        return _from_pubsub(body["message"])
    if body.get("detail-type") == "Object Created" and isinstance(body.get("detail"), Mapping):
        detail = body["detail"]
        return [ObjectCreated(_field(detail, "bucket", "name"), _field(detail, "object", "key"))]
    raise InvalidInput("body", "not a recognised storage event")


def _field(parent: Mapping[str, Any], child: str, name: str) -> str:
    """`parent[child][name]` as a string; "" where either is missing or not an object."""
    inner = parent.get(child)
    return str(inner.get(name, "")) if isinstance(inner, Mapping) else ""


def _as_mapping(data: Any) -> Mapping[str, Any]:
    if isinstance(data, (bytes, str)):
        try:
            data = json.loads(data)
        except ValueError:
            raise InvalidInput("data", "expected JSON event data") from None
    if not isinstance(data, Mapping):
        raise InvalidInput("data", "expected an object")
    return data


def _from_s3_record(rec: Mapping[str, Any]) -> list[ObjectCreated]:
    s3 = rec.get("s3", {})
    try:
        bucket = s3["bucket"]["name"]
        key = s3["object"]["key"]
    except (KeyError, TypeError):
        raise InvalidInput("Records[].s3", "expected s3.bucket.name and s3.object.key") from None
    # S3 notifications URL-encode keys, spaces as '+'.
    return [ObjectCreated(str(bucket), unquote_plus(str(key)))]


def _from_pubsub(message: Mapping[str, Any]) -> list[ObjectCreated]:
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        raise InvalidInput("message.attributes", "expected an object of strings")
    event_type = attributes.get("eventType")
    if event_type is not None and event_type != "OBJECT_FINALIZE":
        return []
    if attributes.get("objectId"):
        return [ObjectCreated(str(attributes.get("bucketId", "")), str(attributes["objectId"]))]
    raw = message.get("data")
    if not raw:
        raise InvalidInput("message.data", "a storage notification must carry the object")
    try:
        data = json.loads(base64.b64decode(raw))
    except (ValueError, TypeError):
        raise InvalidInput("message.data", "expected base64-encoded JSON") from None
    if not isinstance(data, Mapping) or "name" not in data:
        raise InvalidInput("message.data", "expected an object resource with a name")
    return [ObjectCreated(str(data.get("bucket", "")), str(data["name"]))]


def parse_request(headers: Mapping[str, str], body: bytes) -> list[ObjectCreated]:
    """The objects an HTTP delivery names, whatever its shape (see the module doc)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    is_cloudevent = "ce-type" in lowered or lowered.get("content-type", "").startswith(
        "application/cloudevents+json"
    )
    if is_cloudevent:
        from cloudevents.exceptions import GenericException
        from cloudevents.http import from_http

        try:
            event = from_http(dict(headers), body)
        except GenericException as e:
            raise InvalidInput("cloudevent", f"malformed CloudEvent ({e})") from None
        except (ValueError, TypeError, AttributeError, KeyError) as e:
            # The SDK lets errors of a body that is not a JSON object through
            # (found by tests/functions/test_fn_fuzz.py).
            raise InvalidInput(
                "cloudevent", f"malformed CloudEvent ({type(e).__name__}: {e})"
            ) from None
        return from_cloudevent(event["type"], event.get("subject"), event.data)
    return from_json_body(parse_json(body))
