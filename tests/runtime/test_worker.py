"""The real worker process with the real model: protocol robustness, streaming, cancel, crashes."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from app.runtime.launcher import worker_command
from app.runtime.process_client import ProcessClient
from app.runtime.protocol import PROTOCOL_VERSION, ErrorKind, Event, EventKind, RuntimeFailure

STORY = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]


@pytest.fixture
def raw_worker() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(worker_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    yield proc
    if proc.stdin:
        proc.stdin.close()
    proc.wait(10)


def _send(proc: subprocess.Popen[bytes], line: bytes) -> dict:
    assert proc.stdin and proc.stdout
    proc.stdin.write(line + b"\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def test_handshake_and_malformed_lines(raw_worker: subprocess.Popen[bytes]) -> None:
    assert raw_worker.stdout
    hello = json.loads(raw_worker.stdout.readline())
    assert hello["event"] == "hello" and hello["data"]["protocol"] == PROTOCOL_VERSION
    cases = [
        (b"garbage", None, "bad_message"),
        (b'{"id": "a1", "method": "teleport"}', "a1", "unknown_method"),
        (b'{"id": "a2", "method": "chat", "params": {"messages": "hi"}}', "a2", "invalid_params"),
        (b'{"id": "a3", "method": "chat", "params": {"messages": [{"role": "user", "content": "x"}], "sampling": {"temperature": "hot"}}}', "a3", "invalid_params"),
        (b'{"id": "a4", "method": "engine.load", "params": {"model": "no-such-model"}}', "a4", "model_not_found"),
        (b'{"id": "a5", "method": "cancel", "params": {}}', "a5", "invalid_params"),
    ]
    for line, request_id, kind in cases:
        event = _send(raw_worker, line)
        assert (event["event"], event["id"], event["data"]["kind"]) == ("error", request_id, kind)
        assert event["data"]["message"]
    assert _send(raw_worker, b'{"id": "p1", "method": "ping"}') == {"id": "p1", "event": "result", "data": {"pong": True, "protocol": PROTOCOL_VERSION, "status": "done"}}


def test_worker_exits_when_stdin_closes(raw_worker: subprocess.Popen[bytes]) -> None:
    assert raw_worker.stdin and raw_worker.stdout
    raw_worker.stdout.readline()
    raw_worker.stdin.close()
    assert raw_worker.wait(10) == 0


def test_worker_exits_when_its_parent_dies(tmp_path) -> None:
    """The parent is killed with SIGKILL (no clean-up); the orphan notices and leaves."""
    pid_file = tmp_path / "worker.pid"
    code = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen({worker_command()!r}, stdin=subprocess.PIPE, stdout=subprocess.PIPE)\n"
        "p.stdout.readline()\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.05)
    worker = psutil.Process(int(pid_file.read_text()))
    parent.kill()
    parent.wait()
    worker.wait(timeout=10)  # raises psutil.TimeoutExpired if the orphan stays


def test_protocol_stream_survives_native_stdout_noise() -> None:
    code = (
        "import os\n"
        "from app.runtime.launcher import take_stdout\n"
        "out = take_stdout()\n"
        "print('python noise', flush=True)\n"
        "os.write(1, b'native noise\\n')\n"
        "out.write(b'{\"protocol\": true}\\n')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert done.stdout == b'{"protocol": true}\n'
    assert b"python noise" in done.stderr and b"native noise" in done.stderr


@pytest.fixture
def client() -> Iterator[ProcessClient]:
    died: list[str] = []
    restarted: list[bool] = []
    worker = ProcessClient(on_died=died.append, on_restarted=lambda: restarted.append(True)).start()
    worker.died, worker.restarted = died, restarted  # type: ignore[attr-defined]
    yield worker
    worker.close()


def test_streamed_answer(client: ProcessClient) -> None:
    events = list(client.stream("chat", {"messages": [{"role": "user", "content": "Name three colors."}], "sampling": {"temperature": 0, "max_tokens": 40}}))
    tokens = [e.data["text"] for e in events if e.event is EventKind.TOKEN]
    result = events[-1].data
    assert events[-1].event is EventKind.RESULT
    assert len(tokens) >= 3 and "".join(tokens) == result["text"] and result["text"].strip()
    assert result["usage"]["completion_tokens"] >= len(tokens) and result["usage"]["prompt_tokens"] > 0
    assert result["model"] == "smollm2-135m-instruct-q4_1"
    assert any(e.event is EventKind.PROGRESS and e.data["stage"] == "loading" for e in events)


def test_cancel_stops_within_a_second(client: ProcessClient) -> None:
    events: queue.Queue[Event] = queue.Queue()
    request_id = client.submit("chat", {"messages": STORY, "sampling": {"max_tokens": 2000, "seed": 1}}, events.put)
    for _ in range(5):
        assert events.get(timeout=60).event in (EventKind.TOKEN, EventKind.PROGRESS)
    client.cancel(request_id)
    deadline = time.monotonic() + 1.0
    while True:
        event = events.get(timeout=max(0.0, deadline - time.monotonic()))
        if event.is_final:
            break
    assert event.event is EventKind.RESULT and event.data["finish_reason"] == "cancelled"
    assert event.data["usage"]["completion_tokens"] < 2000


def test_kill_9_is_detected_and_the_next_request_works(client: ProcessClient) -> None:
    events: queue.Queue[Event] = queue.Queue()
    client.submit("chat", {"messages": STORY, "sampling": {"max_tokens": 2000}}, events.put)
    assert events.get(timeout=60).event in (EventKind.TOKEN, EventKind.PROGRESS)
    old_pid = client.pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    while not (event := events.get(timeout=30)).is_final:
        pass
    assert event.event is EventKind.ERROR and event.data["kind"] == ErrorKind.WORKER_DIED.value
    assert "SIGKILL" in event.data["message"]
    deadline = time.monotonic() + 60
    while not client.restarted:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.died and client.pid != old_pid  # type: ignore[attr-defined]
    result = client.call("chat", {"messages": [{"role": "user", "content": "Say hello."}], "sampling": {"max_tokens": 8}}, timeout=120)
    assert result["usage"]["completion_tokens"] >= 1


def test_errors_come_back_as_typed_failures(client: ProcessClient, tmp_path) -> None:
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(RuntimeFailure) as info:
        client.call("engine.load", {"model": str(bogus)}, timeout=60)
    assert info.value.kind is ErrorKind.MODEL_INVALID and "broken.gguf" in info.value.message
    assert client.call("ping", timeout=10)["pong"] is True


def test_the_worker_applies_its_memory_limit() -> None:
    limit = 64 * 2**30
    worker = ProcessClient(env={"HEARTH_MEMORY_LIMIT": str(limit)}).start()
    try:
        assert worker.pid is not None
        soft, _ = psutil.Process(worker.pid).rlimit(psutil.RLIMIT_AS)
        assert soft == limit
        assert psutil.Process(worker.pid).environ().get("MALLOC_ARENA_MAX") == "1"
    finally:
        worker.close()
