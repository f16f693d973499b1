"""The README's Python examples, as the code a user would paste."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str, subsection: str) -> list[str]:
    """The fenced ```python blocks under `## section` / `### subsection`, in order."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    part = text[start : end if end > 0 else None]
    sub = part.index(f"\n### {subsection}\n")
    sub_end = part.find("\n### ", sub + 1)
    block = part[sub : sub_end if sub_end > 0 else None]
    found = re.findall(r"```python\n(.*?)```", block, re.S)
    assert found, f"no python blocks under {section} / {subsection}"
    return found
