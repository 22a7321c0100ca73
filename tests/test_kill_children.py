"""The app killed with SIGKILL while a child job runs: every process it started goes with it.

The parent here is GUI-like: a real Python process that starts the worker through `ProcessClient`,
as the studio's bridge does, and asks it for a fine-tune or a quantization. Once the child job is
running, the parent is SIGKILLed (no clean-up of any kind). The worker sees its stdin close and
leaves; the child sees the worker's end of its own stdin close and leaves (`app.runtime.childjob`).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

FACTS = Path(__file__).parent / "data" / "facts"
GONE_WITHIN_S = 5.0

PARENT = """
import json, sys, threading
from app.runtime.process_client import ProcessClient

client = ProcessClient().start()
method, params = sys.argv[1], json.loads(sys.argv[2])
client.submit(method, params, lambda e: print(json.dumps({"event": e.event.value, "data": e.data}, default=str), flush=True))
threading.Event().wait()  # as a window would: until it is closed, or killed
"""


@pytest.fixture
def gui_like_parent() -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(method: str, params: dict[str, Any]) -> tuple[subprocess.Popen[bytes], queue.Queue[dict[str, Any] | None]]:
        proc = subprocess.Popen([sys.executable, "-c", PARENT, method, json.dumps(params)], stdout=subprocess.PIPE, env=os.environ.copy())
        started.append(proc)
        events: queue.Queue[dict[str, Any] | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                events.put(json.loads(line))
            events.put(None)

        threading.Thread(target=pump, daemon=True).start()
        return proc, events

    yield start
    for proc in started:  # a failed test must not leave its tree behind
        tree = _descendants(proc.pid)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for p in tree:
            try:
                p.kill()
            except psutil.Error:
                pass
        if proc.stdout is not None:
            proc.stdout.close()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _wait_for(events: queue.Queue[dict[str, Any] | None], running: Any, timeout: float = 300) -> None:
    """Until a progress event says the child job is at work (``running(data)``)."""
    deadline = time.monotonic() + timeout
    while True:
        event = events.get(timeout=max(0.1, deadline - time.monotonic()))
        assert event is not None, "the parent ended before the child job ran"
        assert event["event"] == "progress", event  # an error or a result: the job never got going
        if running(event["data"]):
            return


def _kill_parent_and_check_the_tree(parent: subprocess.Popen[bytes], role: str) -> None:
    tree = _descendants(parent.pid)
    commands = [p.cmdline() for p in tree]
    assert any("--worker" in c for c in commands), commands
    assert any(c[-2:] == ["--child", role] for c in commands), commands
    parent.kill()
    parent.wait()
    gone, alive = psutil.wait_procs(tree, timeout=GONE_WITHIN_S)
    assert not alive, f"still running {GONE_WITHIN_S:g} s after the app was killed: {[(p.pid, p.cmdline()) for p in alive]}"


def test_killing_the_app_during_training_ends_the_worker_and_the_trainer(gui_like_parent: Any, smollm2_hf: Path, tmp_path: Path) -> None:
    settings = {"max_steps": 50, "batch_size": 2, "seq_length": 64, "threads": 1, "rank": 4, "alpha": 8, "validation_fraction": 0.0}
    params = {"base": str(smollm2_hf), "data": str(FACTS / "train.jsonl"), "output": str(tmp_path / "run"), "settings": settings}
    parent, events = gui_like_parent("finetune.train", params)
    _wait_for(events, lambda data: data.get("stage") == "loading")  # said by the training child itself
    _kill_parent_and_check_the_tree(parent, "finetune")


def test_killing_the_app_during_a_quantization_ends_the_worker_and_the_quantizer(gui_like_parent: Any, model_path: Path, tmp_path: Path) -> None:
    params = {"model": str(model_path), "targets": ["Q8_0"], "evaluate": False, "output_dir": str(tmp_path / "out")}
    parent, events = gui_like_parent("quantize.run", params)
    _wait_for(events, lambda data: data.get("stage") == "quantize" and bool(data.get("done")))  # llama.cpp at work on a tensor
    _kill_parent_and_check_the_tree(parent, "quantize")
