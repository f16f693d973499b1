"""infra/aws, applied against a moto server: what Terraform creates is what the
module promises (fmt, offline init, validate, apply, boto3 checks, destroy)."""

from __future__ import annotations

import json
import os
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import pytest
from botocore.exceptions import ClientError
from terraform import INFRA, REGION, Terraform, copy_infra, provider_block, terraform_missing
from tests.functions.harness import s3_notification

from brainy.entry import aws_lambda, web
from lambda_events import http_event, scheduled_event, sqs_event, sqs_message
from servers import Emulator, start_moto

pytestmark = [
    pytest.mark.skipif(terraform_missing() is not None, reason=str(terraform_missing())),
    pytest.mark.slow,
]

BUCKET = "brainy-deploy-test"
PREFIX = "data"
FUNCTIONS = ("ingest", "search", "indexer", "compactor")


@dataclass
class Stack:
    tf: Terraform
    moto: Emulator
    outputs: dict[str, Any]

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.moto.endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


def _root_module(workdir: Path, endpoint: str) -> None:
    package = workdir / "package.zip"
    with zipfile.ZipFile(package, "w") as z:
        z.writestr("brainy/__init__.py", "")
    (workdir / "main.tf").write_text(
        provider_block(endpoint)
        + f"""
module "brainy" {{
  source        = "../infra/aws"
  bucket_name   = "{BUCKET}"
  prefix        = "{PREFIX}"
  package       = "{package}"
  force_destroy = true
  environment   = {{ BRAINY_CACHE_SIZE = "1GB" }}
}}

output "brainy" {{
  value = module.brainy
}}
"""
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    moto = start_moto()
    try:
        base = tmp_path_factory.mktemp("tf-aws")
        copy_infra(base)
        workdir = base / "root"
        workdir.mkdir()
        _root_module(workdir, moto.endpoint)
        tf = Terraform(workdir)
        tf.init()
        tf.run("apply", "-auto-approve", "-no-color", "-parallelism=4")
        yield Stack(tf, moto, tf.outputs()["brainy"])
    finally:
        moto.stop()


def test_modules_are_formatted_and_valid(tmp_path: Path) -> None:
    Terraform(tmp_path).run("fmt", "-check", "-recursive", "-diff", str(INFRA))
    tf = Terraform(copy_infra(tmp_path) / "aws" / "example")
    tf.init()
    tf.run("validate", "-no-color")


def test_bucket_is_private_encrypted_and_notifies_the_queue(stack: Stack) -> None:
    s3, sqs = stack.client("s3"), stack.client("sqs")
    queue_arn = sqs.get_queue_attributes(
        QueueUrl=stack.outputs["queue_url"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]

    [notification] = s3.get_bucket_notification_configuration(Bucket=BUCKET)["QueueConfigurations"]
    rules = {r["Name"].lower(): r["Value"] for r in notification["Filter"]["Key"]["FilterRules"]}
    assert notification["QueueArn"] == queue_arn
    assert notification["Events"] == ["s3:ObjectCreated:*"]
    assert rules == {"prefix": f"{PREFIX}/", "suffix": ".batch"}

    block = s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    [sse] = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert sse["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    lifecycle = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]}
    abort = lifecycle["abort-incomplete-multipart-uploads"]["AbortIncompleteMultipartUpload"]
    assert abort == {"DaysAfterInitiation": 1}
    # The tiering rule stays off here: moto drops a filter's ObjectSizeGreaterThan,
    # and the provider would wait forever for the rule it wrote to read back.
    assert "segments-to-intelligent-tiering" not in lifecycle


def test_queue_redrives_to_the_dead_letter_queue(stack: Stack) -> None:
    sqs = stack.client("sqs")
    dlq_arn = sqs.get_queue_attributes(
        QueueUrl=stack.outputs["dead_letter_queue_url"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    attributes = sqs.get_queue_attributes(
        QueueUrl=stack.outputs["queue_url"], AttributeNames=["All"]
    )["Attributes"]

    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq_arn
    assert int(redrive["maxReceiveCount"]) == 5
    assert int(attributes["VisibilityTimeout"]) == 6 * 300
    policy = json.loads(attributes["Policy"])
    assert policy["Statement"][0]["Principal"] == {"Service": "s3.amazonaws.com"}


def test_functions_run_the_adapter_with_the_store_in_their_environment(stack: Stack) -> None:
    lam = stack.client("lambda")
    names = stack.outputs["function_names"]

    for role in FUNCTIONS:
        config = lam.get_function_configuration(FunctionName=names[role])
        assert config["Handler"] == f"brainy.entry.aws_lambda.{role}"
        assert config["Runtime"] == "python3.11"
        assert config["Role"] == stack.outputs["role_arns"][role]
        env = config["Environment"]["Variables"]
        assert env["BRAINY_STORE"] == f"s3://{BUCKET}/{PREFIX}"
        assert env["BRAINY_CACHE_DIR"].startswith("/tmp/")
        assert env["BRAINY_CACHE_SIZE"] == "1GB"
    assert (
        lam.get_function_concurrency(FunctionName=names["compactor"])[
            "ReservedConcurrentExecutions"
        ]
        == 1
    )
    for role in ("ingest", "search"):
        url = lam.get_function_url_config(FunctionName=names[role])
        assert url["AuthType"] == "AWS_IAM"
        assert url["FunctionUrl"] == stack.outputs["function_urls"][role]


def test_the_indexer_consumes_the_queue_reporting_partial_failures(stack: Stack) -> None:
    lam, sqs = stack.client("lambda"), stack.client("sqs")
    queue_arn = sqs.get_queue_attributes(
        QueueUrl=stack.outputs["queue_url"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]

    indexer = lam.get_function_configuration(
        FunctionName=stack.outputs["function_names"]["indexer"]
    )["FunctionArn"]

    [mapping] = lam.list_event_source_mappings(EventSourceArn=queue_arn)["EventSourceMappings"]

    assert mapping["FunctionArn"] == indexer
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_the_compactor_runs_on_a_schedule(stack: Stack) -> None:
    events, lam = stack.client("events"), stack.client("lambda")
    compactor = lam.get_function_configuration(
        FunctionName=stack.outputs["function_names"]["compactor"]
    )["FunctionArn"]

    rule = events.describe_rule(Name="brainy-compactor")
    [target] = events.list_targets_by_rule(Rule="brainy-compactor")["Targets"]

    assert rule["ScheduleExpression"] == "rate(15 minutes)"
    assert target["Arn"] == compactor


def test_each_role_has_its_rendered_bucket_policy_and_logs(stack: Stack) -> None:
    iam, logs = stack.client("iam"), stack.client("logs")

    for role in FUNCTIONS:
        name = stack.outputs["role_arns"][role].rsplit("/", 1)[1]
        stored = iam.get_role_policy(RoleName=name, PolicyName="bucket")["PolicyDocument"]
        assert stored == json.loads(stack.outputs["bucket_policies"][role])
        trust = iam.get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"]
        assert trust["Statement"][0]["Principal"] == {"Service": "lambda.amazonaws.com"}
        [group] = logs.describe_log_groups(logGroupNamePrefix=f"/aws/lambda/brainy-{role}")[
            "logGroups"
        ]
        assert group["retentionInDays"] == 14


@dataclass
class EnforcedIam:
    """A moto server that enforces IAM, holding the roles with Terraform's policies."""

    moto: Emulator
    admin: dict[str, str]
    credentials: dict[str, dict[str, str]]

    def client(self, service: str, role: str | None = None) -> Any:
        keys = self.credentials[role] if role else self.admin
        return boto3.client(service, endpoint_url=self.moto.endpoint, region_name=REGION, **keys)


@pytest.fixture(scope="module")
def enforced(stack: Stack) -> Iterator[EnforcedIam]:
    """The policies Terraform rendered, loaded into a fresh moto server with IAM
    enforcement; each role assumable, its credentials bound to its policy only."""
    # The first three requests go unchecked: they make the admin who makes the rest.
    with mock.patch.dict(os.environ, {"INITIAL_NO_AUTH_ACTION_COUNT": "3"}):
        moto = start_moto()
    try:
        unsigned = boto3.client(
            "iam", endpoint_url=moto.endpoint, region_name=REGION,
            aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap",
        )  # fmt: skip
        user = unsigned.create_user(UserName="admin")["User"]
        unsigned.put_user_policy(
            UserName="admin", PolicyName="all", PolicyDocument=json.dumps(ALLOW_ALL)
        )
        key = unsigned.create_access_key(UserName="admin")["AccessKey"]
        admin = {
            "aws_access_key_id": key["AccessKeyId"],
            "aws_secret_access_key": key["SecretAccessKey"],
        }
        iam = boto3.client("iam", endpoint_url=moto.endpoint, region_name=REGION, **admin)
        sts = boto3.client("sts", endpoint_url=moto.endpoint, region_name=REGION, **admin)
        boto3.client("s3", endpoint_url=moto.endpoint, region_name=REGION, **admin).create_bucket(
            Bucket=BUCKET
        )
        trust = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": user["Arn"]}, "Action": "sts:AssumeRole"}
        ]}  # fmt: skip
        credentials = {}
        for role in FUNCTIONS:
            arn = iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))[
                "Role"
            ]["Arn"]
            iam.put_role_policy(
                RoleName=role, PolicyName="bucket",
                PolicyDocument=stack.outputs["bucket_policies"][role],
            )  # fmt: skip
            c = sts.assume_role(RoleArn=arn, RoleSessionName=role)["Credentials"]
            credentials[role] = {
                "aws_access_key_id": c["AccessKeyId"],
                "aws_secret_access_key": c["SecretAccessKey"],
                "aws_session_token": c["SessionToken"],
            }
        yield EnforcedIam(moto, admin, credentials)
    finally:
        moto.stop()


ALLOW_ALL = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}


def _as_role(monkeypatch: pytest.MonkeyPatch, iam: EnforcedIam, role: str, tmp: Path) -> None:
    """The environment a deployed function has, with only `role`'s credentials."""
    keys = iam.credentials[role]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["aws_secret_access_key"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", keys["aws_session_token"])
    monkeypatch.setenv("BRAINY_CACHE_DIR", str(tmp / f"cache-{role}"))


def _denied(client: Any, op: str, key: str) -> bool:
    """Whether IAM refuses `client` the S3 operation `op` ("get", "put", "delete") on `key`."""
    calls = {"get": client.get_object, "put": client.put_object, "delete": client.delete_object}
    extra = {"Body": b"x"} if op == "put" else {}
    try:
        calls[op](Bucket=BUCKET, Key=key, **extra)
    except ClientError as e:
        return e.response["Error"]["Code"] == "AccessDenied"
    return False


def test_each_role_runs_its_path_with_its_policy_only(
    enforced: EnforcedIam, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    admin_s3 = enforced.client("s3")
    config = {"collections": {"docs": {"dimension": 3, "metric": "angular"}}}
    admin_s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/_brainy/config.json", Body=json.dumps(config))
    monkeypatch.setattr(web, "_instances", {})
    for name, value in {
        "BRAINY_STORE": f"s3://{BUCKET}/{PREFIX}",
        "BRAINY_S3_ENDPOINT_URL": enforced.moto.endpoint,
        "BRAINY_S3_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "BRAINY_REFRESH_INTERVAL": "0",
        "BRAINY_RETENTION": "0s",
        # Short, not zero: an upload older than half of it is made again before its commit.
        "BRAINY_GC_GRACE": "4s",
        "BRAINY_BATCH_RETENTION": "0s",
        "BRAINY_COMPACT_MIN_SEGMENTS": "2",
    }.items():
        monkeypatch.setenv(name, value)

    # ingest: writes batches (and its start-up probes), reads back a keyed one.
    _as_role(monkeypatch, enforced, "ingest", tmp_path)
    batches = []
    for i in range(3):
        body = {"collection": "docs", "records": [{"id": f"r{i}", "vector": [1, i, 0]}]}
        event = http_event("POST", "/ingest", body, headers={"Idempotency-Key": f"k{i}"})
        answers = [aws_lambda.ingest(event), aws_lambda.ingest(event)]
        assert [a["statusCode"] for a in answers] == [202, 202], answers
        batches.append(json.loads(answers[0]["body"])["batch"])

    # indexer: commits each batch; quarantines a corrupt one (a delete in wal/).
    _as_role(monkeypatch, enforced, "indexer", tmp_path)
    corrupt = "docs/wal/2026/11/27/w/corrupt.batch"
    admin_s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{corrupt}", Body=b"not a batch")
    keys = [f"{PREFIX}/{k}" for k in [*batches, corrupt]]
    answer = aws_lambda.indexer(sqs_event(sqs_message(s3_notification(BUCKET, keys))))
    assert answer == {"batchItemFailures": []}
    listed = [o["Key"] for o in admin_s3.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX)["Contents"]]
    assert f"{PREFIX}/docs/quarantine/wal/2026/11/27/w/corrupt.batch" in listed
    assert f"{PREFIX}/{corrupt}" not in listed

    # search: reads what the indexer committed.
    _as_role(monkeypatch, enforced, "search", tmp_path)
    answer = aws_lambda.search(
        http_event("POST", "/search", {"collection": "docs", "vector": [1, 2, 0], "k": 3})
    )
    assert answer["statusCode"] == 200, answer
    assert {hit["id"] for hit in json.loads(answer["body"])["results"]} == {"r0", "r1", "r2"}

    # compactor: merges under its lease and collects garbage (deletes).
    _as_role(monkeypatch, enforced, "compactor", tmp_path)
    reports = [aws_lambda.compactor(scheduled_event())]
    time.sleep(4.5)  # past the GC grace: what the first pass replaced may now go
    reports.append(aws_lambda.compactor(scheduled_event()))
    [first], [second] = (r["body"]["collections"] for r in reports)
    assert first["verify"]["ok"] and second["verify"]["ok"], reports
    collected = [*first["gc"]["versions"], *second["gc"]["versions"]]
    collected += [*first["gc"]["segments"], *second["gc"]["segments"]]
    assert collected, reports

    # Every forbidden action is refused by IAM, not only by the code.
    listed = [o["Key"] for o in admin_s3.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX)["Contents"]]
    segment = next(k for k in listed if "/segments/" in k)
    manifest = next(k for k in listed if "/manifests/" in k)
    batch = next(k for k in listed if "/wal/" in k and "quarantine" not in k)
    search, ingest = enforced.client("s3", "search"), enforced.client("s3", "ingest")
    indexer, compactor = enforced.client("s3", "indexer"), enforced.client("s3", "compactor")
    new_manifest = manifest.rsplit("/", 1)[0] + "/99999999999999999999.json"
    config_key = f"{PREFIX}/_brainy/config.json"
    refused = {
        "search writes a manifest": _denied(search, "put", new_manifest),
        "search deletes a segment": _denied(search, "delete", segment),
        "ingest reads a segment": _denied(ingest, "get", segment),
        "ingest reads a manifest": _denied(ingest, "get", manifest),
        "ingest deletes a batch": _denied(ingest, "delete", batch),
        "ingest deletes a manifest": _denied(ingest, "delete", manifest),
        "ingest writes a manifest": _denied(ingest, "put", new_manifest),
        "indexer deletes a manifest": _denied(indexer, "delete", manifest),
        "indexer writes the config": _denied(indexer, "put", config_key),
        "compactor writes the config": _denied(compactor, "put", config_key),
        "compactor writes a batch": _denied(compactor, "put", batch),
    }
    assert refused == dict.fromkeys(refused, True)
    # ...and what a role may do is not refused: the check is not blanket denial.
    assert search.get_object(Bucket=BUCKET, Key=manifest)["Body"].read()


def test_destroy_removes_the_stack(stack: Stack) -> None:
    stack.tf.run("destroy", "-auto-approve", "-no-color", "-parallelism=4")

    assert BUCKET not in [b["Name"] for b in stack.client("s3").list_buckets()["Buckets"]]
    assert stack.client("lambda").list_functions()["Functions"] == []
    assert stack.client("sqs").list_queues().get("QueueUrls", []) == []
