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


def test_ctrl_c_pauses_a_pull_and_the_same_command_resumes_it(fake_hub: Any) -> None:
    import signal
    import time

    fake_hub.stall[GGUF_NAME] = (25 * 2**20, 30.0)  # the server stops after 25 MiB: a window for Ctrl-C
    exe = shutil.which("hearth", path=str(Path(sys.executable).parent))
    command = [exe] if exe else [sys.executable, "-m", "app"]
    pull = subprocess.Popen([*command, "models", "pull", REPO, GGUF_NAME], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    partials = Path(os.environ["HEARTH_HOME"]) / "data" / "models" / hub_fixture.REPO_DIR / ".partial"
    deadline = time.monotonic() + 120
    while sum(p.stat().st_size for p in partials.glob("*.incomplete")) < 10 * 2**20:  # a file appears: no event to wait on
        assert pull.poll() is None and time.monotonic() < deadline, pull.communicate()
        time.sleep(0.1)
    pull.send_signal(signal.SIGINT)
    out, err = pull.communicate(timeout=60)
    assert pull.returncode == 130, err
    assert "paused at" in err and f"hearth models pull {REPO} {GGUF_NAME}" in err and "to resume" in err and out == ""
    assert list(partials.glob("*.incomplete"))  # the pause kept the partial file

    fake_hub.stall.pop(GGUF_NAME, None)
    resumed = hearth("models", "pull", REPO, GGUF_NAME)
    assert resumed.returncode == 0, resumed.stderr
    assert fake_hub.calls("GET", f"/resolve/main/{GGUF_NAME}")[-1].headers["range"].startswith("bytes=")  # resumed, not restarted


def test_a_second_ctrl_c_cancels_the_pull_instead_of_pausing_it(fake_hub: Any) -> None:
    import signal
    import time

    # The file's body stalls from its first byte: a pause waits for bytes (or the read timeout), so
    # the second press comes while the job is still stopping.
    fake_hub.stall[GGUF_NAME] = (0, 30.0)
    exe = shutil.which("hearth", path=str(Path(sys.executable).parent))
    command = [exe] if exe else [sys.executable, "-m", "app"]
    pull = subprocess.Popen([*command, "models", "pull", REPO, GGUF_NAME], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    assert pull.stderr is not None
    deadline = time.monotonic() + 120
    while not fake_hub.calls("GET", f"/resolve/main/{GGUF_NAME}"):  # a request the server records: no event to wait on
        assert pull.poll() is None and time.monotonic() < deadline, pull.communicate()
        time.sleep(0.1)
    pull.send_signal(signal.SIGINT)
    said = []
    for line in pull.stderr:  # the first press is taken: a pause...
        said.append(line)
        if "pausing" in line:
            break
    pull.send_signal(signal.SIGINT)  # ...and the second one makes it a cancel
    out, err = pull.communicate(timeout=90)
    assert pull.returncode == 130, "".join(said) + err
    assert "cancelling" in err and "cancelled" in err.splitlines()[-1] and "to resume" not in err and out == ""
    partials = Path(os.environ["HEARTH_HOME"]) / "data" / "models" / hub_fixture.REPO_DIR / ".partial"
    assert not list(partials.glob("*.incomplete"))  # a cancel keeps nothing to resume from
