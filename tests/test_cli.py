"""The installed `hearth` command, run as a person runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app import __version__


def hearth(*args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("hearth", path=str(Path(sys.executable).parent))
    command = [exe] if exe else [sys.executable, "-m", "app"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, input=stdin)


def test_version_and_help() -> None:
    assert hearth("--version").stdout.strip() == f"hearth {__version__}"
    help_text = hearth("--help").stdout
    for command in ("chat", "models", "hardware", "bench"):
        assert command in help_text


def test_chat_prints_an_answer() -> None:
    done = hearth("chat", "Name three colors.", "--temperature", "0", "--max-tokens", "32", "--stats")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert "tok/s" in done.stderr


def test_interactive_chat_reads_turns_from_stdin() -> None:
    done = hearth("chat", "--max-tokens", "16", "--seed", "4", stdin="Hello!\nWhat is two plus two?\n/exit\n")
    assert done.returncode == 0, done.stderr
    assert len([line for line in done.stdout.splitlines() if line.strip()]) >= 2


def test_chat_with_a_missing_model_says_so() -> None:
    done = hearth("chat", "hi", "--model", "no-such-model")
    assert done.returncode == 1
    assert "No model called 'no-such-model'" in done.stderr and "Traceback" not in done.stderr


def test_hardware_is_json() -> None:
    done = hearth("hardware")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["cpu_cores_logical"] >= 1 and info["ram_total"] > 0 and isinstance(info["gpus"], list)


def test_models_lists_the_embedded_model() -> None:
    done = hearth("models")
    assert done.returncode == 0, done.stderr
    assert "smollm2-135m-instruct-q4_1" in done.stdout and "embedded" in done.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the display check is for Linux desktops")
def test_no_display_gives_one_clear_line() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    exe = shutil.which("hearth", path=str(Path(sys.executable).parent)) or sys.executable
    command = [exe] if exe != sys.executable else [sys.executable, "-m", "app"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no display" in lines[0] and "hearth chat" in lines[0]


def test_plan_explains_each_choice_for_this_machine_and_for_a_profile() -> None:
    here = hearth("plan")
    assert here.returncode == 0, here.stderr
    assert "this machine" in here.stdout and "context length:" in here.stdout and "CPU" in here.stdout
    gpu = hearth("plan", "--hardware", "rtx3060-12gb", "--json")
    assert gpu.returncode == 0, gpu.stderr
    plan = json.loads(gpu.stdout)
    assert plan["plan"]["hardware"] == "rtx3060-12gb" and "on GPU" in plan["summary"]
    assert all(choice["reason"] for key, choice in plan["plan"].items() if isinstance(choice, dict))
    pinned = json.loads(hearth("plan", "--ctx", "2048", "--json").stdout)["plan"]["context_length"]
    assert pinned["value"] == 2048 and pinned["overridden"] is True


def test_plan_with_an_unknown_profile_lists_the_known_ones() -> None:
    done = hearth("plan", "--hardware", "cray-1")
    assert done.returncode == 1 and "rtx3060-12gb" in done.stderr and "Traceback" not in done.stderr
