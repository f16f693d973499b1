"""Terraform, run offline: providers from the local plugin directory, no version
check, every AWS endpoint on a loopback moto server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
PLUGIN_DIR = Path(os.environ.get("BRAINY_TF_PLUGIN_DIR", "/opt/tf-plugins"))
AWS_SERVICES = ("events", "iam", "lambda", "logs", "s3", "sqs", "sts")
REGION = "us-east-1"


def terraform_missing() -> str | None:
    """Why the Terraform tests cannot run here, or None when they can."""
    if shutil.which("terraform") is None:
        return "terraform is not installed (on PATH)"
    return None


def provider_block(endpoint: str) -> str:
    """An AWS provider that talks to `endpoint` only: no credential check, no
    metadata API, no account-id lookup."""
    endpoints = "\n".join(f'    {name} = "{endpoint}"' for name in AWS_SERVICES)
    return f"""
provider "aws" {{
  region                      = "{REGION}"
  access_key                  = "testing"
  secret_key                  = "testing"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_requesting_account_id  = true
  skip_region_validation      = true
  s3_use_path_style           = true
  endpoints {{
{endpoints}
  }}
}}
"""


def copy_infra(dest: Path) -> Path:
    """A copy of infra/ under `dest`, so a root module beside it can call the modules
    by relative path (Terraform uses those in place; `../roles.json` is found)."""
    target = dest / "infra"
    shutil.copytree(INFRA, target, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    return target


class Terraform:
    """`terraform` in one working directory, with an environment that keeps it offline."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        home = workdir / ".home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "empty.tfrc").write_text("")
        keep = ("PATH", "TMPDIR", "LANG")
        self.env = {k: v for k, v in os.environ.items() if k in keep}
        self.env.update(
            HOME=str(home),
            CHECKPOINT_DISABLE="1",  # no version check against checkpoint.hashicorp.com
            TF_IN_AUTOMATION="1",
            TF_INPUT="0",
            TF_CLI_CONFIG_FILE=str(home / "empty.tfrc"),
            AWS_EC2_METADATA_DISABLED="true",
        )

    def run(self, *args: str, timeout: float = 600) -> str:
        done = subprocess.run(
            ["terraform", *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"terraform {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
            )
        return done.stdout

    def init(self) -> str:
        return self.run("init", "-backend=false", f"-plugin-dir={PLUGIN_DIR}", "-no-color")

    def outputs(self) -> dict[str, Any]:
        raw = json.loads(self.run("output", "-json"))
        return {name: value["value"] for name, value in raw.items()}
