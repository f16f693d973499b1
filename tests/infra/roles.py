"""The role table, infra/roles.json: which keys each role may read, write and delete."""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from typing import Any

from terraform import INFRA

TABLE: dict[str, Any] = json.loads((INFRA / "roles.json").read_text())
ROLES: dict[str, dict[str, list[str]]] = TABLE["roles"]
PREFIXES: dict[str, str] = TABLE["prefixes"]


def allowed(role: str, op: str, key: str) -> bool:
    """Whether the table lets `role` do `op` ("read", "write", "delete") on `key`;
    `*` spans `/`, as in an IAM resource ARN."""
    return any(fnmatchcase(key, PREFIXES[name]) for name in ROLES[role][op])
