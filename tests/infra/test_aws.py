"""infra/aws, applied against a moto server: what Terraform creates is what the
module promises (fmt, offline init, validate, apply, boto3 checks, destroy)."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from terraform import INFRA, REGION, Terraform, copy_infra, provider_block, terraform_missing

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
  segment_tiering_days = 30
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
    tiering = lifecycle["segments-to-intelligent-tiering"]["Transitions"]
    assert tiering == [{"Days": 30, "StorageClass": "INTELLIGENT_TIERING"}]


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

    [mapping] = lam.list_event_source_mappings(
        FunctionName=stack.outputs["function_names"]["indexer"]
    )["EventSourceMappings"]

    assert mapping["EventSourceArn"] == queue_arn
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


def test_destroy_removes_the_stack(stack: Stack) -> None:
    stack.tf.run("destroy", "-auto-approve", "-no-color", "-parallelism=4")

    assert BUCKET not in [b["Name"] for b in stack.client("s3").list_buckets()["Buckets"]]
    assert stack.client("lambda").list_functions()["Functions"] == []
    assert stack.client("sqs").list_queues().get("QueueUrls", []) == []
