"""The layers hold: the UI never pulls in the runtime's heavy libraries; the runtime never pulls in Qt."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "app"
HEAVY = ("torch", "transformers", "llama_cpp", "app.kernels", "accelerate", "peft", "trl", "bitsandbytes", "triton")
UI_MAY_USE_FROM_RUNTIME = ("app.runtime.protocol", "app.runtime.client", "app.runtime.process_client", "app.runtime.launcher")


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every module an import statement in this file names (also those inside functions)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _is(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(folder: str, rule) -> list[str]:  # type: ignore[no-untyped-def]
    bad = []
    for path in sorted((APP / folder).rglob("*.py")):
        for line, module in imports_of(path):
            if rule(module):
                bad.append(f"{path.relative_to(APP.parent)}:{line} imports {module}")
    return bad


def test_ui_imports_no_runtime_library() -> None:
    def rule(module: str) -> bool:
        if any(_is(module, heavy) for heavy in HEAVY):
            return True
        if _is(module, "app.runtime"):
            return module != "app.runtime" and not any(_is(module, ok) for ok in UI_MAY_USE_FROM_RUNTIME)
        return False

    assert violations("ui", rule) == []


@pytest.mark.parametrize("folder", ["runtime", "kernels", "chats"])
def test_runtime_and_kernels_import_no_qt(folder: str) -> None:
    assert violations(folder, lambda m: _is(m, "PySide6") or _is(m, "app.ui")) == []


def test_kernels_import_nothing_else_from_app() -> None:
    assert violations("kernels", lambda m: _is(m, "app") and not _is(m, "app.kernels")) == []


def test_the_scan_catches_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import torch\n    from llama_cpp import Llama\n", encoding="utf-8")
    assert [m for _, m in imports_of(sample)] == ["torch", "llama_cpp", "llama_cpp.Llama"]


def test_starting_the_window_loads_no_runtime_library() -> None:
    """Indirect imports count too: build the main window and list what got loaded."""
    code = (
        "import json, sys\n"
        "from PySide6.QtWidgets import QApplication\n"
        "app = QApplication([])\n"
        "from app.ui.bridge import RuntimeBridge\n"
        "from app.ui.main_window import MainWindow\n"
        "w = MainWindow(RuntimeBridge())\n"
        "print(json.dumps(sorted(m for m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    heavy = [m for m in loaded if any(_is(m, h) for h in HEAVY)]
    assert heavy == []


def test_handing_the_http_server_to_the_runtime_loads_no_library() -> None:
    """The entry point hands the server over before the CLI routes library logs to its log file: a
    library imported by then (huggingface_hub) keeps its own handler on the terminal's stderr and
    prints its retry warnings there (a regression `hearth models pull` caught)."""
    code = (
        "import json, sys\n"
        "from app.__main__ import install_http_front\n"
        "install_http_front()\n"
        "print(json.dumps(sorted(m for m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    heavy = [m for m in loaded if any(_is(m, h) for h in (*HEAVY, "huggingface_hub", "fastapi", "uvicorn"))]
    assert heavy == []
