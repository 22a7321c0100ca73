"""`hearth models` against the fake Hub, run as a person runs it (a subprocess with HF_ENDPOINT)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_spec = importlib.util.spec_from_file_location("hub_fixture", Path(__file__).parent / "runtime" / "hub_fixture.py")
assert _spec is not None and _spec.loader is not None
hub_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hub_fixture)
REPO, GGUF_NAME = hub_fixture.REPO, hub_fixture.GGUF_NAME


def hearth(*args: str, stdin: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("hearth", path=str(Path(sys.executable).parent))
    command = [exe] if exe else [sys.executable, "-m", "app"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, env=dict(os.environ), input=stdin)


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    server = hub_fixture.start(tmp_path, monkeypatch)  # sets HF_ENDPOINT, HF_HUB_DISABLE_XET=1 and HEARTH_HOME in os.environ
    yield server
    server.stop()


def test_search_and_files(fake_hub: Any) -> None:
    found = hearth("models", "search", "hearth", "--sort", "likes", "--limit", "5")
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert lines[0].startswith("REPOSITORY") and lines[1].startswith("hearth-test/other-GGUF") and lines[2].startswith(REPO)
    assert hearth("models", "search", "no-such-thing").returncode == 1

    files = hearth("models", "files", REPO)
    assert files.returncode == 0, files.stderr
    rows = {line.split()[0]: line for line in files.stdout.splitlines()[1:] if line.strip() and not line.startswith("Recommended")}
    assert list(rows) == ["Q2_K", "Q4_1", "Q8_0"]
    assert "(recommended)" in rows["Q4_1"] and GGUF_NAME in rows["Q4_1"] and "Runs on" in rows["Q2_K"]
    assert "Recommended: Q4_1" in files.stdout
    missing = hearth("models", "files", "hearth-test/nope")
    assert missing.returncode == 1 and "No repository" in missing.stderr and "Traceback" not in missing.stderr


def test_pull_then_ls_then_rm(fake_hub: Any) -> None:
    pulled = hearth("models", "pull", REPO)  # no file: the recommended variant for this machine
    assert pulled.returncode == 0, pulled.stderr
    target = Path(os.environ["HEARTH_HOME"]) / "data" / "models" / hub_fixture.REPO_DIR / GGUF_NAME
    assert pulled.stdout.strip() == str(target) and target.stat().st_size == hub_fixture.real_gguf().size
    assert "Q4_1" in pulled.stderr and "downloaded and verified" in pulled.stderr

    listed = hearth("models")
    assert listed.returncode == 0 and str(target) in listed.stdout and "embedded" in listed.stdout
    assert str(target) in hearth("models", "ls").stdout
    assert "[downloaded]" in hearth("models", "files", REPO).stdout

    kept = hearth("models", "rm", str(target), stdin="n\n")
    assert kept.returncode == 1 and target.exists() and "Nothing deleted" in kept.stderr
    removed = hearth("models", "rm", str(target), "--yes")
    assert removed.returncode == 0, removed.stderr
    assert not target.exists() and "freed" in removed.stdout
    embedded = hearth("models", "rm", "smollm2-135m-instruct-q4_1", "--yes")
    assert embedded.returncode == 1 and "cannot be deleted" in embedded.stderr
