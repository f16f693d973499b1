"""`make package` builds the same bytes every time, with what Lambda imports."""

from __future__ import annotations

import importlib.util
import os
import zipfile
from pathlib import Path

from terraform import INFRA

spec = importlib.util.spec_from_file_location("package", INFRA / "aws" / "package.py")
assert spec is not None and spec.loader is not None
package = importlib.util.module_from_spec(spec)
spec.loader.exec_module(package)


def _tree(root: Path, order: list[str], mtime: int) -> Path:
    for name in order:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content of {name}\n")
        os.utime(path, (mtime, mtime))
    (root / "brainy" / "__pycache__").mkdir(parents=True, exist_ok=True)
    (root / "brainy" / "__pycache__" / "x.cpython-311.pyc").write_bytes(os.urandom(16))
    return root


def test_two_builds_of_the_same_files_are_byte_identical(tmp_path: Path) -> None:
    names = ["brainy/__init__.py", "functions/search/main.py", "numpy/core.so"]
    first = _tree(tmp_path / "a", names, mtime=1_700_000_000)
    second = _tree(tmp_path / "b", list(reversed(names)), mtime=1_800_000_000)
    (second / "numpy" / "core.so").chmod(0o755)
    (first / "numpy" / "core.so").chmod(0o755)

    digest_a = package.write_zip(first, tmp_path / "a.zip")
    digest_b = package.write_zip(second, tmp_path / "b.zip")

    assert digest_a == digest_b
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.zip") as z:
        assert z.namelist() == sorted(names)
        assert z.getinfo("numpy/core.so").external_attr >> 16 == 0o100755


def test_the_package_holds_the_layer_and_every_function(tmp_path: Path) -> None:
    package.add_sources(tmp_path)

    assert (tmp_path / "brainy" / "entry" / "aws_lambda.py").is_file()
    for name in ("ingest", "search", "indexer", "compactor"):
        assert (tmp_path / "functions" / name / "main.py").is_file()
    assert not list(tmp_path.rglob("__pycache__"))


def test_the_lock_pins_every_dependency_with_annoy_from_its_wheels() -> None:
    lines = [
        line.strip()
        for line in (INFRA / "aws" / "requirements-lambda.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    pins = dict(line.split("==") for line in lines)

    assert pins["annoy-mm"] == "1.17.3"
    assert "annoy" not in pins
    for name in ("numpy", "xxhash", "boto3", "functions-framework", "prometheus-client", "flask"):
        assert name in pins, name
