"""The dispatcher: its three ways to run a method, how a stopped job ends, and every declared
method's params checked against its declaration."""

from __future__ import annotations

import dataclasses
import queue
import threading
import types
import typing
from dataclasses import dataclass
from typing import Any

import pytest

from app.runtime.dispatcher import Dispatcher
from app.runtime.jobs import JobContext, MethodSpec, Mode
from app.runtime.chat_params import ChatParams
from app.runtime.protocol import Event, EventKind, NoParams, Request
from app.runtime.services import Services


@dataclass(frozen=True)
class Done:
    done: bool


@dataclass(frozen=True)
class Answer:
    answer: int


class _Services:
    """Three handlers: a slow pausable background one (a download), an engine one, and a quick one."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def methods(self) -> list[MethodSpec[Any, Any]]:
        def slow(params: NoParams, ctx: JobContext) -> Done:
            ctx.progress("started")
            while not self.release.wait(0.01):
                ctx.check("stopped", kept="partial")
            return Done(True)

        return [
            MethodSpec("download", NoParams, Done, Mode.BACKGROUND, slow, pausable=True),
            MethodSpec("engine_slow", NoParams, Done, Mode.ENGINE, slow),
            MethodSpec("chat", NoParams, Answer, Mode.ENGINE, lambda params, ctx: Answer(42)),
        ]

    def close(self) -> None:
        self.release.set()


def _final(events: queue.Queue[Event], request_id: str, kind: EventKind | None = None) -> Event:
    while True:
        event = events.get(timeout=10)
        if event.id == request_id and (event.is_final if kind is None else event.event is kind):
            return event


def test_a_background_job_does_not_hold_up_the_engine_and_pauses_as_a_result() -> None:
    events: queue.Queue[Event] = queue.Queue()
    services = _Services()
    dispatcher = Dispatcher(events.put, services=services)  # type: ignore[arg-type]
    try:
        dispatcher.submit(Request("d1", "download"))
        _final(events, "d1", EventKind.PROGRESS)
        dispatcher.submit(Request("c1", "chat"))
        assert _final(events, "c1").data == {"answer": 42, "status": "done"}  # answered while the download still runs
        dispatcher.submit(Request("x", "pause", {"target": "d1"}))
        assert _final(events, "d1").data == {"status": "paused", "message": "stopped", "kept": "partial"}
    finally:
        dispatcher.close()


def test_a_job_that_cannot_resume_treats_a_pause_as_a_cancel() -> None:
    events: queue.Queue[Event] = queue.Queue()
    services = _Services()
    dispatcher = Dispatcher(events.put, services=services)  # type: ignore[arg-type]
    try:
        dispatcher.submit(Request("e1", "engine_slow"))
        _final(events, "e1", EventKind.PROGRESS)  # running, not queued: a queued one ends as an error
        dispatcher.submit(Request("x", "pause", {"target": "e1"}))
        assert _final(events, "e1").data["status"] == "cancelled"
    finally:
        dispatcher.close()


def test_engine_jobs_run_in_order_and_a_queued_one_can_be_cancelled() -> None:
    events: queue.Queue[Event] = queue.Queue()
    services = _Services()
    dispatcher = Dispatcher(events.put, services=services)  # type: ignore[arg-type]
    try:
        dispatcher.submit(Request("e1", "engine_slow"))
        dispatcher.submit(Request("c1", "chat"))
        dispatcher.submit(Request("x", "cancel", {"target": "c1"}))
        services.release.set()
        assert _final(events, "e1").data == {"done": True, "status": "done"}
        cancelled = _final(events, "c1")
        assert cancelled.event is EventKind.ERROR and cancelled.data["kind"] == "cancelled"
    finally:
        dispatcher.close()


# ---- every declared method: a bad field is INVALID_PARAMS naming it -------------------------------


@pytest.fixture(scope="module")
def real() -> typing.Iterator[tuple[Dispatcher, queue.Queue[Event]]]:
    events: queue.Queue[Event] = queue.Queue()
    dispatcher = Dispatcher(events.put, services=Services(warm_up=False))
    yield dispatcher, events
    dispatcher.close()


def _declared() -> list[MethodSpec[Any, Any]]:
    services = Services(warm_up=False)
    try:
        return services.methods()
    finally:
        services.close()


DECLARED = _declared()
CHAT_FIELDS = {"messages": [{"role": "user", "content": "Hi"}]}


def _required(spec: MethodSpec[Any, Any]) -> dict[str, Any]:
    """A value for every required field (read from the declaration), so one bad field stands alone."""
    if spec.params is ChatParams:
        return dict(CHAT_FIELDS)
    hints = typing.get_type_hints(spec.params)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(spec.params):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            hint = hints[f.name]
            values[f.name] = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Literal else [] if typing.get_origin(hint) is list else "x"
    return values


def _checked_fields(spec: MethodSpec[Any, Any]) -> list[str]:
    """Every declared field whose type refuses a list of numbers (all but the free-form ones)."""
    hints = typing.get_type_hints(spec.params)
    names = []
    for f in dataclasses.fields(spec.params):
        hint = hints[f.name]
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        if not any(a is Any or typing.get_origin(a) is list and typing.get_args(a) in ((), (Any,)) for a in args):
            names.append(f.name)
    return names


def _invalid(real: tuple[Dispatcher, queue.Queue[Event]], method: str, params: dict[str, Any]) -> str:
    dispatcher, events = real
    request_id = f"{method}-{len(params)}-{sorted(params)}-{id(params)}"
    dispatcher.submit(Request(request_id, method, params))
    final = _final(events, request_id)
    assert final.event is EventKind.ERROR and final.data["kind"] == "invalid_params", (method, params, final.data)
    return str(final.data["message"])


@pytest.mark.parametrize("spec", DECLARED, ids=lambda s: s.name)
def test_every_method_refuses_an_unknown_field_by_name(real: tuple[Dispatcher, queue.Queue[Event]], spec: MethodSpec[Any, Any]) -> None:
    assert "bogus_field" in _invalid(real, spec.name, {**_required(spec), "bogus_field": 1})


@pytest.mark.parametrize("spec", DECLARED, ids=lambda s: s.name)
def test_every_method_refuses_a_missing_or_mistyped_field_by_name(real: tuple[Dispatcher, queue.Queue[Event]], spec: MethodSpec[Any, Any]) -> None:
    required = _required(spec)
    for name in required:
        assert name in _invalid(real, spec.name, {k: v for k, v in required.items() if k != name})
    for name in _checked_fields(spec):
        assert name in _invalid(real, spec.name, {**required, name: [1]})


def test_every_protocol_method_is_declared_once() -> None:
    from app.runtime.protocol import Method

    events: queue.Queue[Event] = queue.Queue()
    dispatcher = Dispatcher(events.put, services=Services(warm_up=False))
    try:
        assert sorted(dispatcher.methods) == sorted(m.value for m in Method)
    finally:
        dispatcher.close()
