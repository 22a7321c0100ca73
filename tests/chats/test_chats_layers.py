"""app.chats uses the standard library only, so the GUI can own it without Qt or torch."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import app.chats

PACKAGE = Path(app.chats.__file__).parent


def test_chats_imports_only_the_standard_library_and_itself() -> None:
    outside = []
    for source in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                if not (name.startswith("app.chats") or top in sys.stdlib_module_names
                        or top == "__future__"):
                    outside.append(f"{source.name}: {name}")
    assert outside == []
