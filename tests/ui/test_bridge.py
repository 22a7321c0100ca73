"""`bridge.run(...)` requests: each delivers only its own events, on the GUI thread, ends exactly one
way, and is released when it ends; failures nobody handles reach the notification sink in words."""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import shiboken6
from PySide6.QtCore import QCoreApplication, QThread
from PySide6.QtWidgets import QWidget

from app.runtime.protocol import ErrorKind, Method, RuntimeFailure
from app.ui.bridge import RuntimeBridge
from app.ui.errors import worded
from app.ui.request import Request


def _on_gui_thread() -> bool:
    app = QCoreApplication.instance()
    return app is not None and QThread.currentThread() is app.thread()


class Recorder:
    """Every callback of one request, with whether it ran on the GUI thread."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.progress: list[dict[str, Any]] = []
        self.ended: list[tuple[str, Any]] = []
        self.off_gui_thread = 0

    def attach(self, request: Request) -> Request:
        return (request.on_token(lambda text: self._add(self.tokens, text))
                .on_progress(lambda data: self._add(self.progress, data))
                .on_success(lambda result: self._add(self.ended, ("success", result)))
                .on_stopped(lambda result: self._add(self.ended, ("stopped", result)))
                .on_failure(lambda failure: self._add(self.ended, ("failure", failure))))

    def _add(self, into: list[Any], item: Any) -> None:
        self.off_gui_thread += not _on_gui_thread()
        into.append(item)


@pytest.fixture
def unstarted(qtbot: Any) -> Iterator[RuntimeBridge]:
    bridge = RuntimeBridge()  # never started: no worker process
    yield bridge
    bridge.close()


@pytest.fixture
def bridge(qtbot: Any) -> Iterator[RuntimeBridge]:
    bridge = RuntimeBridge()
    with qtbot.waitSignal(bridge.sig_ready, timeout=60_000):
        bridge.start()
    yield bridge
    bridge.close()


def test_a_request_before_the_worker_runs_fails_through_its_failure_handler(qtbot: Any, unstarted: RuntimeBridge) -> None:
    seen = Recorder()
    request = seen.attach(unstarted.run(Method.ENGINE_STATUS))  # attached after run(): nothing is missed
    assert request.id.startswith("unsent-") and request.running
    qtbot.waitUntil(lambda: bool(seen.ended), timeout=5_000)
    [(how, failure)] = seen.ended
    assert how == "failure" and isinstance(failure, RuntimeFailure) and failure.kind is ErrorKind.WORKER_DIED and failure.message
    assert seen.off_gui_thread == 0 and request.status == "failed" and unstarted.in_flight == 0


def test_a_failure_nobody_handles_is_worded_into_the_notification_sink(qtbot: Any, unstarted: RuntimeBridge) -> None:
    with qtbot.waitSignal(unstarted.notices.sig_notice, timeout=5_000) as notice:
        unstarted.run(Method.HARDWARE).on_success(lambda result: None)
    [text] = notice.args
    assert text == worded(RuntimeFailure(ErrorKind.WORKER_DIED, "The runtime is not running."))
    assert unstarted.notices.last == text and unstarted.in_flight == 0


def test_two_requests_at_once_each_get_only_their_own_events(qtbot: Any, bridge: RuntimeBridge) -> None:
    chats = {prompt: Recorder() for prompt in ("Name three colors.", "Count from one to five.")}
    listing = Recorder()
    for prompt, seen in chats.items():
        params = {"messages": [{"role": "user", "content": prompt}], "sampling": {"temperature": 0.0, "max_tokens": 12}}
        seen.attach(bridge.run(Method.CHAT, params))
    listing.attach(bridge.run(Method.MODELS_LIST))
    assert bridge.in_flight == 3
    qtbot.waitUntil(lambda: all(s.ended for s in (*chats.values(), listing)), timeout=120_000)
    texts = []
    for seen in chats.values():
        [(how, result)] = seen.ended
        assert how == "success" and result["status"] == "done"
        assert seen.tokens and "".join(seen.tokens) == result["text"]  # its own stream, all of it, nothing else
        texts.append(result["text"])
    assert texts[0] != texts[1]
    [(how, result)] = listing.ended
    assert how == "success" and "models" in result and not listing.tokens and not listing.progress
    assert sum(s.off_gui_thread for s in (*chats.values(), listing)) == 0
    assert bridge.in_flight == 0


def test_a_cancelled_request_reaches_its_stopped_handler(qtbot: Any, bridge: RuntimeBridge) -> None:
    seen = Recorder()
    params = {"messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}],
              "sampling": {"temperature": 0.0, "max_tokens": 2000}}
    request = seen.attach(bridge.run(Method.CHAT, params))
    request.on_token(lambda text: (seen.tokens.append(text), request.cancel()))  # stop at the first token
    qtbot.waitUntil(lambda: bool(seen.ended), timeout=120_000)
    [(how, result)] = seen.ended
    assert how == "stopped" and result["status"] == "cancelled" and request.status == "cancelled"
    assert result["usage"]["completion_tokens"] < 2000  # what it had written is kept, and it stopped early
    assert bridge.in_flight == 0
    request.cancel()  # after the end: nothing to do, no error


def test_a_callback_that_raises_is_logged_and_the_window_goes_on(qtbot: Any, bridge: RuntimeBridge, caplog: Any) -> None:
    def broken(result: dict[str, Any]) -> None:
        raise RuntimeError("a bug in a page")

    caplog.set_level(logging.ERROR, logger="app.ui.request")
    with qtbot.waitSignal(bridge.notices.sig_notice, timeout=30_000):
        request = bridge.run(Method.HARDWARE).on_success(broken)
    assert not request.running and bridge.in_flight == 0  # ended and released all the same
    [record] = [r for r in caplog.records if r.name == "app.ui.request"]
    assert record.exc_info is not None and "a bug in a page" in str(record.exc_info[1])
    assert "log" in bridge.notices.last
    after = Recorder()
    after.attach(bridge.run(Method.HARDWARE))
    qtbot.waitUntil(lambda: bool(after.ended), timeout=30_000)
    assert after.ended[0][0] == "success"


def test_an_ended_request_lets_go_of_its_callbacks(qtbot: Any, bridge: RuntimeBridge) -> None:
    results: list[dict[str, Any]] = []

    class Page:
        def done(self, result: dict[str, Any]) -> None:
            results.append(result)

    page = Page()
    gone = weakref.ref(page)
    request = bridge.run(Method.HARDWARE).on_success(page.done)
    del page
    qtbot.waitUntil(lambda: bool(results), timeout=30_000)
    gc.collect()
    assert gone() is None and bridge.in_flight == 0 and not request.running


def test_callbacks_of_a_deleted_owner_are_not_called(qtbot: Any, bridge: RuntimeBridge) -> None:
    owner = QWidget()
    called: list[str] = []
    request = bridge.run(Method.HARDWARE, owner=owner).on_success(lambda result: called.append("success"))
    shiboken6.delete(owner)  # the dialog closed before the worker answered
    qtbot.waitUntil(lambda: not request.running, timeout=30_000)
    assert called == [] and bridge.in_flight == 0


def test_a_replaced_request_tells_nothing_not_even_its_failure(qtbot: Any, unstarted: RuntimeBridge) -> None:
    old, new = Recorder(), Recorder()
    first = old.attach(unstarted.run(Method.MODELS_LIST))
    new.attach(unstarted.run(Method.MODELS_LIST, replaces=first))  # the newest listing is the one shown
    qtbot.waitUntil(lambda: bool(new.ended), timeout=5_000)
    qtbot.waitUntil(lambda: unstarted.in_flight == 0, timeout=5_000)
    assert old.ended == [] and new.ended[0][0] == "failure" and unstarted.notices.last == ""
