"""Lambda events in the shapes AWS documents, for the Lambda adapter's tests.

* Function URL / API Gateway HTTP API request, payload format 2.0
  (docs.aws.amazon.com/lambda/latest/dg/urls-invocation.html#urls-payloads);
* an SQS batch (docs.aws.amazon.com/lambda/latest/dg/with-sqs.html), each body an
  S3 event notification (structure 2.1, keys URL-encoded) or `s3:TestEvent`;
* an EventBridge scheduled event
  (docs.aws.amazon.com/eventbridge/latest/ref/events-ref-scheduled.html).
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

ACCOUNT = "123456789012"
REGION = "us-east-1"


def http_event(
    method: str,
    path: str,
    body: Any = None,
    *,
    query: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    binary: bool = False,
) -> dict[str, Any]:
    """A Function URL request (IAM auth) as Lambda receives it; `body` JSON-encoded
    unless it is bytes, base64-encoded when `binary` (as a URL does for non-text)."""
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    all_headers = {
        "content-type": "application/json",
        "host": "abcdefghij.lambda-url.us-east-1.on.aws",
        "x-amzn-trace-id": "Root=1-5e6f8a2b-0123456789abcdef01234567",
        "x-forwarded-proto": "https",
        **{k.lower(): v for k, v in (headers or {}).items()},
    }
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": urlencode(query or {}),
        "headers": all_headers,
        "queryStringParameters": dict(query) if query else None,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": "abcdefghij",
            "authorizer": {
                "iam": {
                    "accessKey": "AKIAIOSFODNN7EXAMPLE",
                    "accountId": ACCOUNT,
                    "callerId": "AIDACKCEVSQ6C2EXAMPLE",
                    "userArn": f"arn:aws:iam::{ACCOUNT}:user/caller",
                    "userId": "AIDACKCEVSQ6C2EXAMPLE",
                }
            },
            "domainName": "abcdefghij.lambda-url.us-east-1.on.aws",
            "domainPrefix": "abcdefghij",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "curl/8.5.0",
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": "27/Nov/2026:18:03:58 +0000",
            "timeEpoch": 1795802638390,
        },
        "body": base64.b64encode(raw).decode() if binary else raw.decode(),
        "isBase64Encoded": binary,
    }


def sqs_message(body: Any, message_id: str | None = None) -> dict[str, Any]:
    """One SQS record as Lambda's event source mapping delivers it."""
    text = body if isinstance(body, str) else json.dumps(body)
    return {
        "messageId": message_id or str(uuid.uuid4()),
        "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a" + uuid.uuid4().hex,
        "body": text,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1795802638390",
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": "1795802638392",
        },
        "messageAttributes": {},
        "md5OfBody": hashlib.md5(text.encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:{REGION}:{ACCOUNT}:brainy-batches",
        "awsRegion": REGION,
    }


def sqs_event(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(messages)}


def scheduled_event() -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": "2026-11-27T18:00:00Z",
        "region": REGION,
        "resources": [f"arn:aws:events:{REGION}:{ACCOUNT}:rule/brainy-compactor"],
        "detail": {},
    }
