"""`brainy relay` against a real moto SQS (the dev stack's moto: S3 notifications go
to its SQS, and long polls do not hold up S3) and a real HTTP target.

The notifications are the ones moto's S3 sends when an object is put in a bucket
whose notification configuration names the queue, as `infra/aws` configures it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import boto3
import pytest
from botocore.config import Config

from brainy.entry import dev
from brainy.entry.cli import main
from brainy.entry.processes import free_port
from brainy.entry.relay import Relay, message_cloudevents
from brainy.write.events import ObjectCreated, parse_request

REGION = "us-east-1"


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The dev stack's moto server (S3 + SQS in one process); its endpoint."""
    logs = tmp_path_factory.mktemp("moto-logs")
    child = dev.start_moto(logs)
    try:
        yield child.url
    finally:
        child.stop()


@pytest.fixture
def aws(moto: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """boto3 S3 and SQS clients on moto, the environment pointing at it."""
    for name, value in dev.stack_env(moto).items():
        monkeypatch.setenv(name, value)
    session = boto3.session.Session(region_name=REGION)
    return {
        "s3": session.client("s3", endpoint_url=moto),
        "sqs": session.client("sqs", endpoint_url=moto),
        "endpoint": moto,
    }


class Queue:
    """A queue with a dead-letter queue, and a bucket notifying it of `.batch` objects."""

    def __init__(self, aws: dict[str, Any], max_receive_count: int) -> None:
        self.s3, self.sqs = aws["s3"], aws["sqs"]
        unique = uuid.uuid4().hex[:10]
        self.bucket = f"relay-{unique}"
        self.s3.create_bucket(Bucket=self.bucket)
        self.dlq_url = self.sqs.create_queue(QueueName=f"dlq-{unique}")["QueueUrl"]
        redrive = {
            "deadLetterTargetArn": self._arn(self.dlq_url),
            "maxReceiveCount": str(max_receive_count),
        }
        self.url = self.sqs.create_queue(
            QueueName=f"batches-{unique}", Attributes={"RedrivePolicy": json.dumps(redrive)}
        )["QueueUrl"]
        self.s3.put_bucket_notification_configuration(
            Bucket=self.bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "QueueArn": self._arn(self.url),
                        "Events": ["s3:ObjectCreated:*"],
                        "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": ".batch"}]}},
                    }
                ]
            },
        )

    def _arn(self, url: str) -> str:
        attrs = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return attrs["Attributes"]["QueueArn"]

    def put(self, key: str) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=b"batch")

    def bodies(self, url: str | None = None) -> list[dict[str, Any]]:
        """The bodies of every message visible now (received, then made visible again)."""
        got = self.sqs.receive_message(
            QueueUrl=url or self.url, MaxNumberOfMessages=10, VisibilityTimeout=0
        )
        return [json.loads(m["Body"]) for m in got.get("Messages", [])]


class Target(ThreadingHTTPServer):
    """An HTTP endpoint that records each request and answers `status`, or `failing`
    for events whose subject is in `fail_subjects`."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _TargetHandler)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        self.fail_subjects: set[str] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def objects(self) -> list[ObjectCreated]:
        """What the indexer would make of every request received."""
        return [o for headers, body in self.requests for o in parse_request(headers, body)]


class _TargetHandler(BaseHTTPRequestHandler):
    server: Target

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.requests.append((headers, body))
        failing = headers.get("ce-subject") in self.server.fail_subjects
        status = 503 if failing else self.server.status
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def target() -> Iterator[Target]:
    server = Target()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def relay_for(aws: dict[str, Any], queue: Queue, target_url: str) -> Relay:
    # Visibility 0: a message left alone is visible again at once, so each poll
    # is one more delivery (the queue's timeout does the same, only later).
    return Relay(aws["sqs"], queue.url, target_url, wait_seconds=0, visibility_timeout=0)


# --------------------------------------------------------------------- tests


def test_a_created_batch_is_posted_as_the_s3_adapter_cloudevent_and_its_message_deleted(
    aws: dict[str, Any], target: Target
) -> None:
    queue = Queue(aws, max_receive_count=5)
    key = "docs/wal/2026/a b+c=é.batch"  # a space, a plus, an equals sign, non-ASCII
    queue.put(key)
    queue.put("docs/_brainy/config.json")  # not a batch: no notification
    relay = relay_for(aws, queue, target.url)

    while relay.poll():  # the s3:TestEvent of the configuration, then the batch
        pass

    (headers, _), *more = target.requests
    assert not more
    assert headers["ce-type"] == "com.amazonaws.s3.ObjectCreated:Put"
    assert headers["ce-source"] == f"aws:s3.{REGION}.{queue.bucket}"
    assert headers["ce-subject"] == quote_plus(key)  # as S3 sends it
    assert headers["ce-specversion"] == "1.0"
    assert target.objects() == [ObjectCreated(queue.bucket, key)]
    assert relay.tally.deleted == 2 and relay.tally.kept == 0  # test event + batch
    assert queue.bodies() == []


def test_the_s3_test_event_is_acknowledged_without_a_post(
    aws: dict[str, Any], target: Target
) -> None:
    queue = Queue(aws, max_receive_count=5)  # configuring notifications sends it
    relay = relay_for(aws, queue, target.url)

    assert relay.poll() == 1

    assert target.requests == []
    assert relay.tally.deleted == 1
    assert queue.bodies() == []


def test_a_failed_post_keeps_the_message_until_the_redrive_policy_dead_letters_it(
    aws: dict[str, Any], target: Target
) -> None:
    queue = Queue(aws, max_receive_count=3)
    relay = relay_for(aws, queue, target.url)
    relay.poll()  # the test event
    target.status = 503
    queue.put("docs/wal/x.batch")

    deliveries = 0
    while relay.poll():
        deliveries += 1
        assert deliveries <= 3

    assert deliveries == 3  # each one answered 503, so the message stayed
    assert relay.tally.kept == 3 and relay.tally.deleted == 1
    assert len(target.requests) == 3
    assert queue.bodies() == []
    (dead,) = queue.bodies(queue.dlq_url)
    assert message_cloudevents(json.dumps(dead))[0]["subject"] == quote_plus("docs/wal/x.batch")


def test_a_message_of_several_records_is_deleted_only_once_every_post_succeeded(
    aws: dict[str, Any], target: Target
) -> None:
    queue = Queue(aws, max_receive_count=10)
    relay_for(aws, queue, target.url).poll()  # the test event
    for key in ("docs/wal/1.batch", "docs/wal/2.batch"):
        queue.put(key)
    # One body carrying both records, as S3 may send.
    records = [r for body in queue.bodies() for r in body["Records"]]
    for message in aws["sqs"].receive_message(QueueUrl=queue.url, MaxNumberOfMessages=10)[
        "Messages"
    ]:
        aws["sqs"].delete_message(QueueUrl=queue.url, ReceiptHandle=message["ReceiptHandle"])
    aws["sqs"].send_message(QueueUrl=queue.url, MessageBody=json.dumps({"Records": records}))
    relay = relay_for(aws, queue, target.url)
    target.fail_subjects = {quote_plus("docs/wal/2.batch")}

    assert relay.poll() == 1
    assert relay.tally.posted == 1 and relay.tally.failed == 1 and relay.tally.kept == 1
    assert len(queue.bodies()) == 1  # kept

    target.fail_subjects = set()
    assert relay.poll() == 1
    assert relay.tally.deleted == 1
    assert queue.bodies() == []
    keys = [o.key for o in target.objects()]
    assert keys == ["docs/wal/1.batch", "docs/wal/2.batch", "docs/wal/1.batch", "docs/wal/2.batch"]


def test_an_unreachable_target_or_a_body_that_is_no_notification_keeps_the_message(
    aws: dict[str, Any], target: Target
) -> None:
    queue = Queue(aws, max_receive_count=10)
    relay_for(aws, queue, target.url).poll()  # the test event
    queue.put("docs/wal/y.batch")
    closed = f"http://127.0.0.1:{free_port()}/"
    unreachable = relay_for(aws, queue, closed)

    assert unreachable.poll() == 1
    assert unreachable.tally.kept == 1 and "Connection" in unreachable.tally.errors[0]
    assert len(queue.bodies()) == 1

    queue2 = Queue(aws, max_receive_count=10)
    relay = relay_for(aws, queue2, target.url)
    relay.poll()  # the test event
    aws["sqs"].send_message(QueueUrl=queue2.url, MessageBody="not json")
    assert relay.poll() == 1
    assert relay.tally.kept == 1 and "body" in relay.tally.errors[0]
    assert target.requests == []
    raw = aws["sqs"].receive_message(QueueUrl=queue2.url, VisibilityTimeout=0)["Messages"]
    assert [m["Body"] for m in raw] == ["not json"]  # left for the redrive policy


def test_the_relay_command_delivers_then_stops_cleanly_on_sigterm(
    aws: dict[str, Any], target: Target, tmp_path: Path
) -> None:
    queue = Queue(aws, max_receive_count=5)
    env = {**os.environ, **dev.stack_env(aws["endpoint"])}
    log = open(tmp_path / "relay.log", "wb")  # noqa: SIM115 - closed below
    argv = ["relay", "--queue-url", queue.url, "--target", target.url, "--wait-seconds", "20"]
    process = subprocess.Popen(
        [sys.executable, "-m", "brainy", *argv],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        queue.put("docs/wal/z.batch")
        deadline = time.monotonic() + 60
        while not target.requests and time.monotonic() < deadline:
            time.sleep(0.1)
        assert target.objects() == [ObjectCreated(queue.bucket, "docs/wal/z.batch")]

        process.send_signal(signal.SIGTERM)  # while it waits in a 20 s long poll
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    output = (tmp_path / "relay.log").read_text()
    assert "relay stopped: 2 messages deleted, 0 kept" in output, output
    assert queue.bodies() == []


def test_a_queue_that_does_not_exist_is_a_clear_error(
    aws: dict[str, Any], target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"{aws['endpoint']}/123456789012/no-such-queue"
    argv = ["relay", "--queue-url", missing, "--target", target.url, "--wait-seconds", "0"]

    assert main(argv, env=dev.stack_env(aws["endpoint"])) == 2

    assert "error: --queue-url: SQS refused to receive" in capsys.readouterr().err


def test_an_unreachable_sqs_is_retried_until_the_relay_is_stopped(
    target: Target, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in dev.stack_env("http://unused").items():
        monkeypatch.setenv(name, value)
    closed = f"http://127.0.0.1:{free_port()}"
    sqs = boto3.session.Session(region_name=REGION).client(
        "sqs", endpoint_url=closed, config=Config(retries={"total_max_attempts": 1})
    )
    relay = Relay(sqs, f"{closed}/123456789012/q", target.url, wait_seconds=0)
    thread = threading.Thread(target=relay.run)
    caplog.set_level(logging.WARNING, logger="brainy.relay")
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while "receive failed" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "receive failed" in caplog.text
        assert thread.is_alive()  # it keeps trying rather than dying
    finally:
        relay.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()
