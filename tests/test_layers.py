"""The layer's folders show the architecture: every import points down the list
(DESIGN §2), so there is no circle and nothing reaches back up."""

from __future__ import annotations

import ast
from pathlib import Path

import brainy

ORDER = ["storage", "core", "format", "table", "write", "read", "maintenance", "service", "entry"]
ROOT = Path(brainy.__file__).parent


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "brainy" and parts[1] in ORDER else None


def test_every_import_points_down_the_layers():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if len(rel.parts) < 2:
            continue  # brainy/__init__.py, __main__.py: the package's own doors
        here = rel.parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                there = _layer(name)
                if there is not None and ORDER.index(there) > ORDER.index(here):
                    upward.append(f"{rel}: imports {name}")
    assert not upward, "\n".join(upward)


def test_every_module_sits_in_a_layer():
    stray = [p.name for p in ROOT.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert not stray and folders == set(ORDER)
