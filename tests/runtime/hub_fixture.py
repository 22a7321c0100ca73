"""The fake Hub set up for the model-manager tests (service, CLI, UI); not a test module.

Loaded by path, like hub_server, because the test folders are not packages. ``start`` serves one
GGUF repository (the real SmolLM2 Q4_1 file plus listing-only Q2_K and Q8_0 variants), points
HF_ENDPOINT and a private HF_HOME at it, and gives Hearth a private HEARTH_HOME, all through
``monkeypatch`` so that a worker started afterwards inherits them.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from app.runtime import library


def _load(name: str) -> Any:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


hub_server = _load("hub_server")
REPO = "hearth-test/SmolLM2-135M-Instruct-GGUF"
GGUF_NAME = library.EMBEDDED_FILE
REPO_DIR = REPO.replace("/", "--")


@functools.cache
def real_gguf() -> Any:
    """The embedded GGUF as a hub file, hashed once per session."""
    return hub_server.HubFile(GGUF_NAME, library.embedded_model_path())


def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    server = hub_server.FakeHub()
    size = real_gguf().size
    server.add(hub_server.HubRepo(REPO, [
        real_gguf(),
        hub_server.HubFile("SmolLM2-135M-Instruct.Q2_K.gguf", b"x", listed_size=int(size * 0.75)),
        hub_server.HubFile("SmolLM2-135M-Instruct.Q8_0.gguf", b"y", listed_size=int(size * 1.5)),
        hub_server.HubFile("README.md", b"# SmolLM2 GGUF\n", lfs=False),
    ], downloads=900, likes=20, tags=["gguf", "llama", "text-generation"], library_name="gguf"))
    server.add(hub_server.HubRepo("hearth-test/other-GGUF", [hub_server.HubFile("other.Q4_0.gguf", b"GGUF other")],
                                  downloads=10, likes=300, tags=["gguf"], library_name="gguf"))
    server.start()
    hub_server.point_huggingface_hub_at(server, tmp_path / "hf-home", monkeypatch)
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path / "hearth-home"))
    return server
