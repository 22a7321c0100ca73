"""The one child-process job helper, on its own `selftest-child` role: real processes started through
the launcher, as the dry run, the quantizer and the trainer are."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from app.runtime import launcher
from app.runtime.childjob import FAILED, ChildFailed, run_child
from app.runtime.jobs import JobContext, JobStopped
from app.runtime.protocol import ErrorKind, Event, EventKind, JobStatus, RuntimeFailure

ROLE = "selftest-child"


class Recorder(JobContext):
    """A job context that keeps every event it would send."""

    def __init__(self, *, pausable: bool = False) -> None:
        self.events: list[Event] = []
        super().__init__("test", self.events.append, pausable=pausable)

    def progress_records(self, stage: str) -> list[dict[str, Any]]:
        return [e.data for e in self.events if e.event is EventKind.PROGRESS and e.data["stage"] == stage]


def test_progress_is_relayed_in_order_and_the_result_comes_back() -> None:
    ctx = Recorder()
    result = run_child(ROLE, {"steps": 5, "echo": {"a": [1, 2]}}, ctx, what="the self-test")
    assert result["echo"] == {"a": [1, 2]}
    steps = ctx.progress_records("step")
    assert [(s["done"], s["total"], s["unit"]) for s in steps] == [(i, 5, "steps") for i in range(1, 6)]
    assert [s["fraction"] for s in steps] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert ctx.progress_records("start")[0]["pid"] == result["pid"]
    assert not psutil.pid_exists(result["pid"]) or psutil.Process(result["pid"]).status() == psutil.STATUS_ZOMBIE


def test_prints_and_native_writes_to_fd_1_go_to_stderr_never_into_the_events(tmp_path: Path) -> None:
    ctx = Recorder()
    log = tmp_path / "child.log"
    lines: list[str] = []
    result = run_child(ROLE, {"print": "python print to stdout", "echo": 1}, ctx, what="the self-test", stderr_log=log, on_stderr=lines.append)
    assert result["echo"] == 1
    assert all(e.event is EventKind.PROGRESS for e in ctx.events)  # nothing else reached the stream (a stray line would be dropped with a warning)
    said = log.read_text(encoding="utf-8")
    assert "python print to stdout" in said and "native write to fd 1" in said
    assert "native write to fd 1" in lines


def test_a_failure_in_the_child_arrives_with_its_kind() -> None:
    with pytest.raises(RuntimeFailure) as caught:
        run_child(ROLE, {"fail": "that file is not a model", "fail_kind": "model_invalid"}, Recorder(), what="the self-test")
    assert caught.value.kind is ErrorKind.MODEL_INVALID
    assert caught.value.message == "that file is not a model"
    assert not isinstance(caught.value, ChildFailed)


def test_an_abort_arrives_as_internal_naming_the_signal_with_the_stderr_tail(tmp_path: Path) -> None:
    partial = tmp_path / "half.gguf"
    with pytest.raises(ChildFailed) as caught:
        run_child(ROLE, {"write": str(partial), "crash": True}, Recorder(), what="the self-test", partial=[partial])
    assert caught.value.kind is ErrorKind.INTERNAL
    assert "SIGABRT" in caught.value.message and caught.value.exit_code < 0
    assert "about to abort: simulated native crash" in caught.value.detail
    assert not partial.exists()


def test_an_exit_without_a_word_says_its_status() -> None:
    with pytest.raises(ChildFailed) as caught:
        run_child(ROLE, {"exit": 7}, Recorder(), what="the self-test")
    assert caught.value.exit_code == 7 and "exit status 7" in caught.value.message


def test_classify_rewords_a_failure() -> None:
    def classify(tail: str, code: int) -> RuntimeFailure | None:
        return RuntimeFailure(ErrorKind.DISK_FULL, f"full ({code})") if "simulated" in tail else None

    with pytest.raises(RuntimeFailure) as caught:
        run_child(ROLE, {"crash": True}, Recorder(), what="the self-test", classify=classify)
    assert caught.value.kind is ErrorKind.DISK_FULL


def _stop_once_started(ctx: Recorder, partial: Path, stop: Any) -> tuple[threading.Thread, list[BaseException], dict[str, Any]]:
    """Run a sleeping child in a thread; once it has written ``partial``, call ``stop``."""
    outcome: list[BaseException] = []
    started: dict[str, Any] = {}

    def run() -> None:
        try:
            run_child(ROLE, {"write": str(partial), "sleep": 60}, ctx, what="the self-test", partial=[partial],
                      on_progress=lambda record: started.update(record))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while not (partial.exists() and started.get("pid")):
        assert time.monotonic() < deadline and thread.is_alive(), outcome
        time.sleep(0.02)
    stop()
    return thread, outcome, started


def test_cancel_kills_within_a_second_and_removes_the_partial_output(tmp_path: Path) -> None:
    ctx = Recorder()
    partial = tmp_path / "out.part"
    thread, outcome, started = _stop_once_started(ctx, partial, ctx.cancel)
    thread.join(timeout=1.0)
    assert not thread.is_alive(), "the child was not stopped within a second"
    assert len(outcome) == 1 and isinstance(outcome[0], JobStopped), outcome
    assert outcome[0].status is JobStatus.CANCELLED
    assert not partial.exists()
    assert not psutil.pid_exists(started["pid"])


def test_pause_ends_as_paused(tmp_path: Path) -> None:
    ctx = Recorder(pausable=True)
    thread, outcome, started = _stop_once_started(ctx, tmp_path / "out.part", ctx.pause)
    thread.join(timeout=10)
    assert len(outcome) == 1 and isinstance(outcome[0], JobStopped), outcome
    assert outcome[0].status is JobStatus.PAUSED
    assert not psutil.pid_exists(started["pid"])


def test_a_child_past_its_timeout_is_killed() -> None:
    with pytest.raises(ChildFailed) as caught:
        run_child(ROLE, {"sleep": 60}, None, what="the self-test", timeout=1)
    assert caught.value.timed_out and "did not finish within 1 s" in caught.value.message
    assert not [p for p in psutil.Process().children(recursive=True) if ROLE in p.cmdline()]


def test_the_child_exits_by_itself_when_its_parent_closes_stdin() -> None:
    """The parent's end of the pipe closing is how a child sees its parent die."""
    proc = subprocess.Popen(launcher.child_command(ROLE), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps({"sleep": 60}).encode() + b"\n")
        proc.stdin.flush()
        first = json.loads(proc.stdout.readline())
        assert first["event"] == "progress" and first["data"]["stage"] == "start"
        proc.stdin.close()
        assert proc.wait(timeout=10) == launcher.EXIT_ORPHANED
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_request_that_is_not_an_object_is_refused_in_words() -> None:
    # stdin stays open: a closed stdin means "the parent died", and the child would just leave
    proc = subprocess.Popen(launcher.child_command(ROLE), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"[1, 2]\n")
        proc.stdin.flush()
        event = json.loads(proc.stdout.readline())
        assert proc.wait(timeout=30) == FAILED
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
    assert event["event"] == "error" and event["data"]["kind"] == "invalid_params" and "JSON object" in event["data"]["message"]


def test_an_unknown_role_is_refused() -> None:
    done = subprocess.run(launcher.child_command("no-such-role"), input=b"{}\n", capture_output=True, timeout=60, check=False)
    assert done.returncode != 0 and b"unknown child role" in done.stderr


def test_the_self_test_runs_a_child_job() -> None:
    from app.ui.selftest import child_job_works

    assert child_job_works() == (True, "")
