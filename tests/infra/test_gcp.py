"""infra/gcp, read as HCL (no Google provider offline): one service account and
Cloud Run service per role of the role table, each told its role; bucket bindings
as narrow as the table allows; the trigger and the schedule reach the right roles."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import hcl2
import pytest
from roles import PREFIXES, ROLES
from terraform import INFRA, Terraform, terraform_missing

GCP = INFRA / "gcp"


def _plain(value: Any) -> Any:
    """python-hcl2 keeps a string's quotes; drop them, in keys too."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _parse() -> dict[str, Any]:
    merged: dict[str, Any] = {"resource": {}, "variable": {}, "locals": {}, "data": {}}
    for path in sorted(GCP.glob("*.tf")):
        with path.open() as f:
            parsed = _plain(hcl2.load(f))
        for block in parsed.get("resource", []) + parsed.get("data", []):
            for kind, named in block.items():
                merged["resource"].setdefault(kind, {}).update(named)
        for block in parsed.get("variable", []):
            merged["variable"].update(block)
        for block in parsed.get("locals", []):
            merged["locals"].update(block)
    return merged


HCL = _parse()


def _resources(kind: str) -> dict[str, Any]:
    return HCL["resource"][kind]


def _role_of(member: str) -> str:
    found = re.search(r'google_service_account\.role\["(\w+)"\]', member)
    assert found, member
    return found.group(1)


def test_gcp_module_is_formatted(tmp_path: Path) -> None:
    if terraform_missing():
        pytest.skip(str(terraform_missing()))
    Terraform(tmp_path).run("fmt", "-check", "-recursive", "-diff", str(GCP))


def test_one_service_account_and_service_per_role_of_the_table() -> None:
    assert "roles.json" in HCL["locals"]["roles"] and ".roles" in HCL["locals"]["roles"]
    account = _resources("google_service_account")["role"]
    service = _resources("google_cloud_run_v2_service")["role"]
    assert account["for_each"] == service["for_each"] == "${local.roles}"

    [template] = service["template"]
    assert template["service_account"] == "${google_service_account.role[each.key].email}"
    [container] = template["containers"]
    [env] = container["dynamic"]
    variables = env["env"]["for_each"]
    assert "BRAINY_ROLE = each.key" in variables
    assert "BRAINY_STORE = local.store_url" in variables
    assert env["env"]["content"] == [{"name": "${env.key}", "value": "${env.value}"}]
    [probe] = container["startup_probe"]
    assert probe["http_get"][0]["path"] == "/health"


def test_search_gets_the_seed_size_by_default() -> None:
    variables = HCL["variable"]
    assert variables["cpu"]["default"]["search"] == "4"
    assert variables["memory"]["default"]["search"] == "16Gi"
    assert set(variables["cpu"]["default"]) == set(ROLES)
    assert set(variables["max_instances"]["default"]) == set(ROLES)


def test_bucket_bindings_follow_the_role_table() -> None:
    grants: dict[str, list[tuple[str, str | None]]] = {role: [] for role in ROLES}
    for binding in _resources("google_storage_bucket_iam_member").values():
        condition = binding.get("condition", [{}])[0].get("expression")
        grants[_role_of(binding["member"])].append((binding["role"], condition))

    probes = PREFIXES["probes"].rstrip("*")
    for role, access in ROLES.items():
        granted = {name for name, _ in grants[role]}
        if not access["write"]:
            assert grants[role] == [("roles/storage.objectViewer", None)], role
        elif set(access["delete"]) - {"probes"}:
            assert grants[role] == [("roles/storage.objectUser", None)], role
        else:
            # Creates, never overwrites or deletes, except its own probes.
            assert "roles/storage.objectCreator" in granted, role
            wide = [c for name, c in grants[role] if name == "roles/storage.objectUser"]
            assert len(wide) == 1 and wide[0] is not None and probes in wide[0], role
        if access["read"]:
            assert granted & {"roles/storage.objectViewer", "roles/storage.objectUser"}, role


def test_finalized_objects_reach_the_indexer_and_the_schedule_the_compactor() -> None:
    trigger = _resources("google_eventarc_trigger")["batches"]
    criteria = {c["attribute"]: c["value"] for c in trigger["matching_criteria"]}
    [destination] = trigger["destination"][0]["cloud_run_service"]
    job = _resources("google_cloud_scheduler_job")["compactor"]
    [target] = job["http_target"]

    assert criteria["type"] == "google.cloud.storage.object.v1.finalized"
    assert 'role["indexer"]' in destination["service"]
    assert 'role["compactor"]' in target["uri"] and target["uri"].endswith("/compact")
    assert target["http_method"] == "POST"
    assert "service_account_email" in target["oidc_token"][0]


def test_index_updated_events_have_a_topic_the_writers_may_publish_to() -> None:
    assert "index_updated" in _resources("google_pubsub_topic")
    publishers = _resources("google_pubsub_topic_iam_member")["index_updated"]
    assert publishers["role"] == "roles/pubsub.publisher"
