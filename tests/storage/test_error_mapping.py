"""Cloud errors become Brainy's storage errors once, at the edge, and retry accordingly."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import boto3
import pytest
import requests
from botocore.stub import Stubber
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from brainy.storage import (
    NotFound,
    NotModified,
    PreconditionFailed,
    RetryPolicy,
    StorageError,
    Transient,
)
from brainy.storage.gcs import GCSStore
from brainy.storage.gcs import translate_error as gcs_error
from brainy.storage.s3 import S3Store
from servers import free_port


@pytest.fixture
def stubbed(
    recording_retry: Callable[[int], RetryPolicy],
) -> Iterator[tuple[S3Store, Stubber]]:
    """An S3 store whose client is answered by botocore's Stubber: nothing goes on the wire."""
    client = boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    with Stubber(client) as stubber:
        yield S3Store("bucket-x", "pre", client=client, retry=recording_retry(3)), stubber
        stubber.assert_no_pending_responses()


PUT_IF_ABSENT = {"Bucket": "bucket-x", "Key": "pre/manifests/1.json", "Body": b"m"}


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (409, "ConditionalRequestConflict"),
        (503, "SlowDown"),
        (500, "InternalError"),
        (429, "TooManyRequests"),
        (400, "RequestTimeout"),
    ],
)
def test_s3_transient_answers_are_retried(
    stubbed: tuple[S3Store, Stubber], status: int, code: str
) -> None:
    store, stubber = stubbed
    expected = {**PUT_IF_ABSENT, "IfNoneMatch": "*"}
    stubber.add_client_error("put_object", code, http_status_code=status, expected_params=expected)
    stubber.add_response("put_object", {"ETag": '"e1"'}, expected)

    assert store.put("manifests/1.json", b"m", if_absent=True) == '"e1"'
    assert store.requests["put"] == 2


@pytest.mark.parametrize(
    ("status", "code"), [(409, "ConditionalRequestConflict"), (503, "SlowDown")]
)
def test_s3_transient_answers_raise_transient_when_retries_run_out(
    stubbed: tuple[S3Store, Stubber], status: int, code: str
) -> None:
    store, stubber = stubbed
    for _ in range(3):
        stubber.add_client_error("put_object", code, http_status_code=status)

    with pytest.raises(Transient, match=code):
        store.put("manifests/1.json", b"m", if_absent=True)
    assert store.retry.asked == [0, 1]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("condition", "status", "code"),
    [
        ({"if_absent": True}, 412, "PreconditionFailed"),
        ({"if_match": '"e0"'}, 412, "PreconditionFailed"),
        ({"if_match": '"e0"'}, 404, "NoSuchKey"),  # S3's answer to a CAS on a missing key
    ],
)
def test_s3_lost_conditional_put_is_precondition_failed_and_not_retried(
    stubbed: tuple[S3Store, Stubber], condition: dict[str, object], status: int, code: str
) -> None:
    store, stubber = stubbed
    stubber.add_client_error("put_object", code, http_status_code=status)

    with pytest.raises(PreconditionFailed):
        store.put("manifests/1.json", b"m", **condition)  # type: ignore[arg-type]
    assert store.requests["put"] == 1


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (404, "NoSuchKey", NotFound),
        (304, "304", NotModified),
        (403, "AccessDenied", StorageError),
        (404, "NoSuchBucket", StorageError),
        (501, "NotImplemented", StorageError),
    ],
)
def test_s3_final_answers_are_typed_and_not_retried(
    stubbed: tuple[S3Store, Stubber], status: int, code: str, error: type
) -> None:
    store, stubber = stubbed
    stubber.add_client_error("get_object", code, http_status_code=status)

    with pytest.raises(error) as raised:
        store.get("k", if_none_match='"e1"')
    assert type(raised.value) is error  # a missing bucket is not a missing object
    assert "s3://bucket-x/pre/k" in str(raised.value)
    assert store.requests["get"] == 1


def test_s3_refused_connection_is_transient(
    monkeypatch: pytest.MonkeyPatch, recording_retry: Callable[[int], RetryPolicy]
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = S3Store(
        "bucket-x", endpoint_url=f"http://127.0.0.1:{free_port()}", retry=recording_retry(2)
    )

    with pytest.raises(Transient, match="bucket-x/k"):
        store.get("k")
    assert store.requests["get"] == 2


@pytest.mark.parametrize(
    ("raised", "error"),
    [
        (gexc.NotFound("no such object"), NotFound),
        (gexc.PreconditionFailed("generation moved"), PreconditionFailed),
        (gexc.NotModified("same generation"), NotModified),
        (gexc.TooManyRequests("one write per second"), Transient),
        (gexc.ServiceUnavailable("backend"), Transient),
        (gexc.InternalServerError("backend"), Transient),
        (requests.ConnectionError("reset by peer"), Transient),
        (gexc.Forbidden("no access"), StorageError),
    ],
)
def test_gcs_errors_are_typed(raised: Exception, error: type) -> None:
    translated = gcs_error(raised, "put", "gs://bucket-x/k")

    assert type(translated) is error
    assert "put gs://bucket-x/k" in str(translated)


def test_gcs_refused_connection_is_transient(
    recording_retry: Callable[[int], RetryPolicy],
) -> None:
    client = storage.Client(
        project="brainy-local",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": f"http://127.0.0.1:{free_port()}"},
    )
    store = GCSStore("bucket-x", client=client, retry=recording_retry(2))

    with pytest.raises(Transient, match="bucket-x/k"):
        store.put("k", b"v", if_absent=True)
    assert store.requests["put"] == 2
