"""Build the Lambda deployment package: `python infra/aws/package.py [OUT]` (`make package`).

One zip for every function: the locked dependencies installed for Lambda's
platform (CPython 3.11 on x86_64, Amazon Linux 2, glibc 2.26: wheels only, never a
local compile), the `brainy` layer and `functions/`, at the zip's root. Builds are
byte-identical: entries sorted, one fixed timestamp, fixed permissions, no
bytecode. Annoy comes from `annoy-mm` 1.17.3, whose manylinux wheel holds the same
`annoy` module as the `annoy` 1.17.3 source distribution (see README, Deploy).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCK = Path(__file__).with_name("requirements-lambda.txt")
DEFAULT_OUT = REPO / "build" / "brainy-lambda.zip"
PIP_PLATFORM = [
    "--platform", "manylinux2014_x86_64",
    "--platform", "manylinux_2_24_x86_64",
    "--implementation", "cp",
    "--python-version", "3.11",
    "--only-binary=:all:",
]  # fmt: skip
# 1980-01-01, the earliest time a zip entry can hold.
EPOCH = (1980, 1, 1, 0, 0, 0)
SKIP_DIRS = {"__pycache__", "bin"}


def install_dependencies(target: Path) -> None:
    """pip-install the locked requirements for Lambda's platform into `target`."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
         *PIP_PLATFORM, "--target", str(target), "-r", str(LOCK)],
        check=True,
    )  # fmt: skip


def add_sources(target: Path) -> None:
    """The `brainy` package and each function's `main.py`."""
    shutil.copytree(REPO / "layers" / "brainy", target / "brainy", ignore=_ignore)
    for main in sorted((REPO / "functions").glob("*/main.py")):
        dest = target / "functions" / main.parent.name / "main.py"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(main, dest)


def _ignore(folder: str, names: list[str]) -> set[str]:
    return {n for n in names if n in SKIP_DIRS or n.endswith((".pyc", ".pyo"))}


def write_zip(tree: Path, out: Path) -> str:
    """Zip `tree` into `out` reproducibly; return the zip's sha256."""
    files = sorted(
        p for p in tree.rglob("*")
        if p.is_file() and not SKIP_DIRS.intersection(p.relative_to(tree).parts)
        and p.suffix not in (".pyc", ".pyo")
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(tree).as_posix(), EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            executable = os.access(path, os.X_OK)
            info.external_attr = (0o100755 if executable else 0o100644) << 16
            info.create_system = 3  # Unix, whatever builds it
            z.writestr(info, path.read_bytes(), compresslevel=9)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def build(out: Path = DEFAULT_OUT) -> str:
    with tempfile.TemporaryDirectory(prefix="brainy-package-") as tmp:
        tree = Path(tmp) / "package"
        install_dependencies(tree)
        add_sources(tree)
        return write_zip(tree, out)


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    digest = build(out)
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB) sha256 {digest}")
