"""The modules the image compiles with mypyc: setup.py's COMPILED list, the one place it is written.

Read from the file, not imported: importing setup.py would run setuptools."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def compiled_sources() -> list[str]:
    """Their paths from the repository root, without `.py` (`autoscaler/engine/limits`)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "COMPILED" for t in node.targets
        ):
            return [str(p).removesuffix(".py") for p in ast.literal_eval(node.value)]
    raise AssertionError("setup.py has no COMPILED list")
