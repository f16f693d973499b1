"""`brainy dev` (`make dev`): the whole system on a laptop, with the event path a
cloud gives.

It starts, each on a free loopback port and in a process group of its own:

* a moto server (S3, SQS, SNS), holding the bucket, a queue of batch-created
  notifications with a dead-letter queue and redrive policy, and the bucket's
  `s3:ObjectCreated:*` notification for `.batch` keys to that queue, as
  `infra/aws/main.tf` configures them; moto delivers the notifications itself;
* the ingest, search, indexer and compactor functions under functions-framework;
* `brainy relay`, posting each notification to the indexer as a CloudEvent.

It declares a collection (`docs`, text through the hash embedder) so the printed
`curl` examples work, prints the URLs and the environment that points the CLI at
the same bucket, writes them to `.brainy/dev/urls.json`, and waits. SIGINT or
SIGTERM (or a child that dies) stops every process it started; so does any error
while starting.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shlex
import shutil
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from brainy.core.config import CollectionSchema
from brainy.core.errors import InvalidInput
from brainy.entry.commands import Subparsers, add_command
from brainy.entry.processes import (
    LOOPBACK,
    Child,
    environ,
    function_argv,
    spawn,
    start_server,
)
from brainy.service.app import Brainy

DEV_DIR = Path(".brainy/dev")
BUCKET = "brainy-dev"
QUEUE = "brainy-batches"
DEAD_LETTERS = "brainy-batches-dlq"
MAX_RECEIVE_COUNT = 5  # infra/aws variables.tf max_receive_count
VISIBILITY_TIMEOUT = 60  # seconds before a failed (or slow) delivery is redelivered
REGION = "us-east-1"
FUNCTIONS = ("ingest", "search", "indexer", "compactor")
DEV_SCHEMA = CollectionSchema("docs", dimension=256, metric="angular", embedder="hash")


# --------------------------------------------------------------------- moto


def serve_moto(host: str, port: int) -> None:
    """moto's server (every service on one port, so S3 notifications reach its SQS),
    answering S3 and SNS one request at a time: moto checks a conditional write's
    precondition and then writes without a lock, which concurrent commits could
    race. SQS requests go past the lock, so a relay's long poll blocks nothing."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import run_simple

    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialised(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("AmazonSQS"):
            return app(environ, start_response)
        with lock:
            return list(app(environ, start_response))

    run_simple(host, port, serialised, threaded=True)


def start_moto(logs: Path) -> Child:
    """`serve_moto` in a process of its own on a free loopback port."""
    if importlib.util.find_spec("moto") is None:
        raise InvalidInput("moto", "not installed: pip install -e '.[dev]' (make dev does)")
    return start_server(
        "moto",
        lambda port: [sys.executable, "-m", "brainy.entry.dev", "moto", LOOPBACK, str(port)],
        child_env({}),
        lambda _: logs / "moto.log",
        "/moto-api/",
    )


def provision(endpoint: str, bucket: str = BUCKET) -> dict[str, str]:
    """The bucket, the queue with its dead-letter queue and redrive policy, and the
    bucket's notification of created `.batch` objects to the queue (infra/aws/main.tf).

    Returns:
        `queue_url`, `dead_letter_queue_url`.
    """
    import boto3

    session = boto3.session.Session(region_name=REGION)
    s3 = session.client("s3", endpoint_url=endpoint)
    sqs = session.client("sqs", endpoint_url=endpoint)
    s3.create_bucket(Bucket=bucket)
    dlq_url = sqs.create_queue(QueueName=DEAD_LETTERS)["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVE_COUNT)}
    queue_url = sqs.create_queue(
        QueueName=QUEUE,
        Attributes={
            "VisibilityTimeout": str(VISIBILITY_TIMEOUT),
            "RedrivePolicy": json.dumps(redrive),
        },
    )["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "Id": "brainy-batches",
                    "QueueArn": queue_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": ".batch"}]}},
                }
            ]
        },
    )
    return {"queue_url": queue_url, "dead_letter_queue_url": dlq_url}


# -------------------------------------------------------------------- stack


def stack_env(endpoint: str, bucket: str = BUCKET) -> dict[str, str]:
    """What to export so the CLI (and boto3) talk to the dev bucket."""
    return {
        "BRAINY_STORE": f"s3://{bucket}",
        "BRAINY_S3_ENDPOINT_URL": endpoint,
        "BRAINY_S3_REGION": REGION,
        "BRAINY_SQS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without Brainy or AWS settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRAINY_", "AWS_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def curl_examples(urls: Mapping[str, str], collection: str = DEV_SCHEMA.name) -> list[str]:
    """Three commands a user can paste: ingest, search, and a delete."""
    ingest = {
        "collection": collection,
        "records": [
            {"id": "hello", "text": "hello world from brainy", "metadata": {"lang": "en"}},
            {"id": "bonjour", "text": "bonjour le monde", "metadata": {"lang": "fr"}},
        ],
    }
    search = {"collection": collection, "text": "hello world", "k": 3}
    delete = {"collection": collection, "deletes": ["hello"]}

    def curl(url: str, body: Any) -> str:
        return (
            f"curl -s -X POST {url} -H 'Content-Type: application/json' "
            f"-d {shlex.quote(json.dumps(body))}"
        )

    return [
        curl(urls["ingest"] + "/ingest", ingest),
        curl(urls["search"] + "/search", search),
        curl(urls["ingest"] + "/ingest", delete),
    ]


class Stack:
    """The running dev stack: what it started, in start order, stopped in reverse."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.repo = _repo_file("functions").parent
        self.children: list[Child] = []
        self.urls: dict[str, Any] = {}

    def start(self, out: TextIO) -> dict[str, Any]:
        """Start everything; on any failure what was started is stopped again."""
        try:
            return self._start(out)
        except BaseException:
            self.stop()
            raise

    def _start(self, out: TextIO) -> dict[str, Any]:
        logs = self.workdir / "logs"
        python = sys.executable
        moto = start_moto(logs)
        self.children.append(moto)
        print(f"moto (S3, SQS, SNS)  {moto.url}", file=out, flush=True)
        env = stack_env(moto.url)
        with environ(env):  # boto3 reads the dummy credentials there
            queues = provision(moto.url)
            _declare_collection(env)

        urls: dict[str, Any] = {}
        for name in FUNCTIONS:
            settings = {
                **env,
                "BRAINY_CACHE_DIR": str((self.workdir / "cache" / name).resolve()),
                "BRAINY_INSTANCE_ID": f"{name}-dev",
            }
            server = start_server(
                name,
                functools.partial(function_argv, name, repo=self.repo),
                child_env(settings),
                lambda _, name=name: logs / f"{name}.log",
                "/health",
            )
            self.children.append(server)
            urls[name] = server.url
            print(f"{name:<20} {server.url}", file=out, flush=True)

        relay_argv = [python, "-m", "brainy", "relay", "--queue-url", queues["queue_url"],
                      "--target", urls["indexer"] + "/"]  # fmt: skip
        relay = spawn("relay", relay_argv, child_env(env), logs / "relay.log")
        self.children.append(relay)
        print(f"{'relay':<20} {queues['queue_url']} -> {urls['indexer']}/", file=out, flush=True)
        self.urls = {
            **urls,
            "s3": moto.url,
            "collection": DEV_SCHEMA.name,
            "logs": str(logs.resolve()),
            **queues,
            "env": env,
        }
        return self.urls

    def dead(self) -> Child | None:
        """A child that exited on its own, if any."""
        return next((c for c in self.children if c.process.poll() is not None), None)

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()


def _repo_file(*parts: str) -> Path:
    """A file of the source tree the package is installed from (editable install)."""
    here = Path(__file__).resolve()
    for root in here.parents:
        candidate = root.joinpath(*parts)
        if candidate.exists():
            return candidate
    raise RuntimeError(f"{'/'.join(parts)} not found above {here}: run from a source checkout")


def _declare_collection(env: Mapping[str, str]) -> None:
    app = Brainy.from_env("cli", env)
    try:
        app.create_collection(DEV_SCHEMA)
    finally:
        app.close()


def describe(urls: Mapping[str, Any], urls_path: Path) -> str:
    """What `brainy dev` prints once everything answers."""
    env = urls["env"]
    lines = ["", "Brainy dev stack is up. For the CLI on the same bucket:", ""]
    lines += [f"  export {k}={shlex.quote(v)}" for k, v in env.items()]
    lines += ["", "Try (records become searchable once the relay delivered their event):", ""]
    lines += [f"  {command}" for command in curl_examples(urls)]
    lines += ["", f"URLs and environment: {urls_path}; logs: {urls['logs']}"]
    lines += ["Ctrl-C stops everything.", ""]
    return "\n".join(lines)


def run_dev(workdir: Path, out: TextIO) -> int:
    """Start the stack, write `urls.json`, wait for SIGINT/SIGTERM or a dead child,
    stop everything. Returns the exit status (1 if a child died, 130 if interrupted
    while starting)."""
    stop = threading.Event()
    starting = threading.Event()
    starting.set()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()
        if starting.is_set():  # abandon the start-up (once: the clean-up runs in peace)
            starting.clear()
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    stack = Stack(workdir)
    urls_path = workdir / "urls.json"
    status = 0
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        urls_path.unlink(missing_ok=True)
        for leftover in ("cache", "logs"):  # the bucket is new: so are the caches
            shutil.rmtree(workdir / leftover, ignore_errors=True)
        urls = stack.start(out)
        starting.clear()
        tmp = urls_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(urls, indent=2) + "\n")
        tmp.replace(urls_path)  # a script polling for the file never reads half of it
        print(describe(urls, urls_path), file=out, flush=True)
        while not stop.wait(0.5):
            dead = stack.dead()
            if dead is not None:
                print(
                    f"{dead.name} exited with {dead.process.returncode}; stopping:\n"
                    f"{dead.log_tail()}",
                    file=sys.stderr,
                )
                status = 1
                break
    except KeyboardInterrupt:
        status = 130
    finally:
        starting.clear()
        print("stopping the dev stack", file=out, flush=True)
        stack.stop()
        urls_path.unlink(missing_ok=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status


# ---------------------------------------------------------------- command


def dev_command(sub: Subparsers) -> None:
    """`brainy dev`: the subcommand's parser, for `cli.COMMANDS`."""
    p = add_command(
        sub,
        "dev",
        "run the whole system locally: moto (S3+SQS+SNS), the four functions and the "
        "relay, until Ctrl-C",
        _run_dev,
    )
    p.add_argument(
        "--dir", type=Path, default=DEV_DIR, help=f"urls.json, logs, caches (default {DEV_DIR})"
    )


def _run_dev(args: Any, session: Any) -> int:
    return run_dev(args.dir, sys.stdout)


if __name__ == "__main__" and sys.argv[1:2] == ["moto"]:
    serve_moto(sys.argv[2], int(sys.argv[3]))
