"""`brainy relay`: S3 notifications from an SQS queue, posted to the indexer as the
CloudEvents an AWS S3 source adapter delivers.

On AWS the queue triggers the indexer Lambda directly (infra/aws); anywhere else
(a laptop with `make dev`, a container next to real S3 and SQS) this loop does the
same job. Each message body is an S3 event notification (also accepted wrapped in
an SNS envelope, for a bucket that notifies a topic the queue subscribes to). Each
record becomes one binary-mode CloudEvent, mapped as the CloudEvents AWS S3 adapter
specifies:

    id       responseElements.x-amz-request-id "." responseElements.x-amz-id-2
    source   eventSource "." awsRegion "." s3.bucket.name
    type     "com.amazonaws.s3." eventName          (com.amazonaws.s3.ObjectCreated:Put)
    subject  s3.object.key                          (URL-encoded, as S3 sends it)
    time     eventTime
    data     the record

A message is deleted only when every one of its records was answered 2xx; otherwise
it is left alone, so the queue's visibility timeout redelivers it and its redrive
policy moves it to the dead-letter queue after `maxReceiveCount` receives. The one
`s3:TestEvent` S3 sends when notifications are configured is deleted unposted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import signal
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any
from urllib.parse import unquote_plus

from botocore.exceptions import BotoCoreError, ClientError
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from brainy.core.errors import InvalidInput, parse_json
from brainy.entry.commands import Subparsers, add_command

log = logging.getLogger("brainy.relay")

S3_TYPE_PREFIX = "com.amazonaws.s3."
DEFAULT_WAIT_SECONDS = 20  # SQS's longest long poll
DEFAULT_POST_TIMEOUT = 300.0  # the indexer's timeout in infra/aws
MAX_MESSAGES = 10  # SQS's largest receive
MAX_BACKOFF = 30.0  # seconds between receives while SQS fails
_REGION_IN_URL = re.compile(r"sqs[.-]([a-z0-9-]+)\.amazonaws\.com")


# ------------------------------------------------------------------ mapping


def s3_cloudevent(record: Mapping[str, Any]) -> CloudEvent:
    """The CloudEvent the CloudEvents AWS S3 adapter makes of one notification record.

    A record without `responseElements` (emulators leave it out) gets an id derived
    from its content, so a redelivered message carries the same ids again.
    """
    try:
        bucket = str(record["s3"]["bucket"]["name"])
        key = str(record["s3"]["object"]["key"])
        event_name = str(record["eventName"])
    except (KeyError, TypeError):
        raise InvalidInput(
            "Records[]", "expected eventName, s3.bucket.name and s3.object.key"
        ) from None
    ids = record.get("responseElements") or {}
    if ids.get("x-amz-request-id") and ids.get("x-amz-id-2"):
        event_id = f"{ids['x-amz-request-id']}.{ids['x-amz-id-2']}"
    else:
        event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(record, sort_keys=True)))
    attributes = {
        "id": event_id,
        "type": S3_TYPE_PREFIX + event_name.removeprefix("s3:"),
        "source": f"{record.get('eventSource', 'aws:s3')}.{record.get('awsRegion', '')}.{bucket}",
        "subject": key,
        "datacontenttype": "application/json",
    }
    if record.get("eventTime"):
        attributes["time"] = str(record["eventTime"])
    return CloudEvent(attributes, dict(record))


def message_cloudevents(body: str | bytes) -> list[CloudEvent]:
    """The CloudEvents of one SQS message body: one per S3 record, none for the
    `s3:TestEvent`.

    Raises:
        InvalidInput: the body is not an S3 notification (naming the field at fault).
    """
    payload = parse_json(body)
    if isinstance(payload, Mapping) and payload.get("Type") == "Notification":
        return message_cloudevents(str(payload.get("Message", "")))  # an SNS envelope
    if not isinstance(payload, Mapping):
        raise InvalidInput("body", "expected a JSON object")
    if payload.get("Event") == "s3:TestEvent":
        return []
    records = payload.get("Records")
    if not isinstance(records, list):
        raise InvalidInput("Records", "expected a list of S3 event records")
    return [s3_cloudevent(record) for record in records]


# -------------------------------------------------------------------- relay


@dataclass
class Tally:
    """What a relay did so far: messages deleted and kept, events posted and failed."""

    deleted: int = 0
    kept: int = 0
    posted: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class _Interrupted(BaseException):
    """Raised by the signal handler to abandon a long poll (nothing is lost: a message
    received but not yet returned becomes visible again after its timeout). A
    BaseException, like KeyboardInterrupt, so no `except Exception` swallows it."""


class Relay:
    """Moves S3 notifications from one SQS queue to one HTTP target.

    Args:
        sqs: a boto3 SQS client.
        queue_url: the queue's URL.
        target: the URL CloudEvents are posted to (the indexer's base URL).
        wait_seconds: long-poll time of one receive (0 to 20).
        visibility_timeout: seconds a received message stays hidden; None keeps the
            queue's own setting.
        post_timeout: seconds to wait for the target's answer.
    """

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        target: str,
        *,
        wait_seconds: int = DEFAULT_WAIT_SECONDS,
        visibility_timeout: int | None = None,
        post_timeout: float = DEFAULT_POST_TIMEOUT,
    ) -> None:
        if not 0 <= wait_seconds <= 20:
            raise InvalidInput("--wait-seconds", f"expected 0 to 20, got {wait_seconds}")
        self.sqs = sqs
        self.queue_url = queue_url
        self.target = target
        self.wait_seconds = wait_seconds
        self.visibility_timeout = visibility_timeout
        self.post_timeout = post_timeout
        self.tally = Tally()
        self._stop = threading.Event()
        self._receiving = False

    # ------------------------------------------------------------ one message

    def post(self, event: CloudEvent) -> str | None:
        """POST one binary-mode CloudEvent; None on a 2xx, else why it failed."""
        headers, body = to_binary(event)
        request = urllib.request.Request(self.target, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.post_timeout) as resp:
                resp.read()
                return None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
        except urllib.error.HTTPError as e:
            with e:
                detail = e.read()[:500].decode(errors="replace")
            return f"HTTP {e.code} {detail}"
        except (OSError, ValueError) as e:  # refused, reset, timed out, bad URL
            return f"{type(e).__name__}: {e}"

    def handle(self, message: Mapping[str, Any]) -> bool:
        """Post every event of one message; delete it if all succeeded. Returns
        whether it was deleted."""
        message_id = message.get("MessageId", "?")
        try:
            events = message_cloudevents(message.get("Body", ""))
        except InvalidInput as e:
            return self._keep(message_id, f"not an S3 notification: {e}")
        if not events:
            log.info("relay: message %s names no object (s3:TestEvent); deleted", message_id)
        failures = []
        for event in events:
            problem = self.post(event)
            if problem is None:
                self.tally.posted += 1
                log.info(
                    "relay: %s %s -> %s", event["type"], unquote_plus(event["subject"]), self.target
                )
            else:
                self.tally.failed += 1
                failures.append(f"{event['subject']}: {problem}")
        if failures:
            return self._keep(message_id, "; ".join(failures))
        try:
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        except (BotoCoreError, ClientError) as e:  # redelivered; the indexer shrugs it off
            return self._keep(message_id, f"delete failed: {e}")
        self.tally.deleted += 1
        return True

    def _keep(self, message_id: str, why: str) -> bool:
        self.tally.kept += 1
        self.tally.errors.append(why)
        log.warning("relay: message %s kept for redelivery: %s", message_id, why)
        return False

    # ------------------------------------------------------------------ loop

    def poll(self) -> int:
        """One receive (a long poll of `wait_seconds`) and the handling of what came;
        returns how many messages came."""
        kw: dict[str, Any] = {
            "QueueUrl": self.queue_url,
            "MaxNumberOfMessages": MAX_MESSAGES,
            "WaitTimeSeconds": self.wait_seconds,
        }
        if self.visibility_timeout is not None:
            kw["VisibilityTimeout"] = self.visibility_timeout
        self._receiving = True
        try:
            if self._stop.is_set():
                return 0
            messages = self.sqs.receive_message(**kw).get("Messages", [])
        except ClientError as e:
            if not _transient(e):
                raise InvalidInput("--queue-url", f"SQS refused to receive: {e}") from None
            raise
        finally:
            self._receiving = False
        for message in messages:
            self.handle(message)  # finished even when a stop was asked meanwhile
        return len(messages)

    def run(self) -> Tally:
        """Poll until `stop()` (or SIGINT/SIGTERM under `signals_stop`)."""
        log.info("relay: %s -> %s", self.queue_url, self.target)
        backoff = 0.0
        with contextlib.suppress(_Interrupted):
            while not self._stop.is_set():
                try:
                    self.poll()
                    backoff = 0.0
                except (BotoCoreError, ClientError) as e:  # unreachable, throttled, 5xx
                    backoff = min(MAX_BACKOFF, max(1.0, 2 * backoff))
                    log.warning("relay: receive failed (%s); again in %.0f s", e, backoff)
                    self._stop.wait(backoff)
        log.info("relay stopped: %d messages deleted, %d kept", self.tally.deleted, self.tally.kept)
        return self.tally

    def stop(self) -> None:
        self._stop.set()

    @contextlib.contextmanager
    def signals_stop(self) -> Iterator[None]:
        """While inside, SIGINT and SIGTERM stop the loop: a long poll is abandoned at
        once, a message being handled is finished first."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self._stop.set()
            if self._receiving:
                raise _Interrupted

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _transient(error: ClientError) -> bool:
    """Throttling or a server-side failure, which a later receive may not meet."""
    response = error.response
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    code = str(response.get("Error", {}).get("Code", ""))
    return status >= 500 or status == 429 or "Throttl" in code or "Unavailable" in code


def sqs_client(queue_url: str, endpoint_url: str | None, region: str | None) -> Any:
    """A boto3 SQS client for `queue_url`: region from the argument, boto3's own
    configuration, the queue URL (`sqs.<region>.amazonaws.com`), else us-east-1."""
    import boto3

    session = boto3.session.Session()
    found = _REGION_IN_URL.search(queue_url)
    region = region or session.region_name or (found.group(1) if found else "us-east-1")
    return session.client("sqs", endpoint_url=endpoint_url, region_name=region)


# ---------------------------------------------------------------- command


def relay_command(sub: Subparsers) -> None:
    """`brainy relay`: the subcommand's parser, for `cli.COMMANDS`."""
    p = add_command(
        sub,
        "relay",
        "long-poll an SQS queue of S3 notifications and post each as a CloudEvent "
        "to the indexer; a message is deleted only once the indexer answered 2xx",
        _run_relay,
    )
    p.set_defaults(log_level=logging.INFO)  # long-running: say what it does
    p.add_argument("--queue-url", required=True, metavar="URL", help="the SQS queue")
    p.add_argument("--target", required=True, metavar="URL", help="the indexer's URL")
    p.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="SQS endpoint (default: $BRAINY_SQS_ENDPOINT_URL, else AWS)",
    )
    p.add_argument("--region", help="SQS region (default: boto3's, else the queue URL's)")
    p.add_argument("--wait-seconds", type=int, default=DEFAULT_WAIT_SECONDS)
    p.add_argument(
        "--visibility-timeout", type=int, help="seconds (default: the queue's own setting)"
    )
    p.add_argument("--post-timeout", type=float, default=DEFAULT_POST_TIMEOUT)


def _run_relay(args: Any, session: Any) -> int:
    endpoint = args.endpoint_url or session.env.get("BRAINY_SQS_ENDPOINT_URL") or None
    relay = Relay(
        sqs_client(args.queue_url, endpoint, args.region),
        args.queue_url,
        args.target,
        wait_seconds=args.wait_seconds,
        visibility_timeout=args.visibility_timeout,
        post_timeout=args.post_timeout,
    )
    with relay.signals_stop():
        relay.run()
    return 0
