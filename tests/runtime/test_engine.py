"""The engine service in process: plan, dry run when the plan is tight, load, status, and a
cancelled chat."""

from __future__ import annotations

import dataclasses
import queue
from typing import Any

from app.runtime import hardware, library
from app.runtime.dispatcher import Dispatcher
from app.runtime.jobs import JobContext, MethodSpec
from app.runtime.planner import load_profile
from app.runtime.chat_params import ChatParams
from app.runtime.protocol import Event, EventKind, NoParams, Request
from app.runtime.services.engine import EngineLoadParams, EngineService


def _engine(hw: hardware.Hardware) -> EngineService:
    models = library.scan([])
    return EngineService(models=lambda: models, hardware=lambda: hw, default_prefs=lambda: {})


def test_a_roomy_plan_loads_without_a_dry_run_and_reports_what_it_used() -> None:
    engine = _engine(hardware.probe())
    events: list[Event] = []
    try:
        status = engine.load(EngineLoadParams(), JobContext("t1", events.append))
    finally:
        engine.close()
    stages = [e.data["stage"] for e in events if e.event is EventKind.PROGRESS]
    assert stages == ["planned", "loading", "loaded"]
    assert status.loaded and status.settings["n_ctx"] == status.plan["context_length"]["value"]
    assert status.measured["dry_run"].startswith("no dry run") and status.measured["fallback"] == []
    assert status.measured["rss_increase_bytes"] > 0


def test_a_tight_plan_is_confirmed_by_a_dry_run_first() -> None:
    # A CPU machine (the named profile, whatever this one has: with a GPU the plan would not touch
    # the RAM budget). 1 GiB is the planner's RAM margin; leave about 600 MB above it, so SmolLM2's
    # plan is tight.
    tight = dataclasses.replace(load_profile("cpu-16gb"), ram_available=2**30 + 600 * 2**20)
    engine = _engine(tight)
    events: list[Event] = []
    try:
        status = engine.load(EngineLoadParams(prefs={"context_length": 8192}), JobContext("t2", events.append))
    finally:
        engine.close()
    stages = [e.data["stage"] for e in events if e.event is EventKind.PROGRESS]
    assert stages[:2] == ["checking", "planned"]
    assert "dry run" in status.measured["dry_run"] and "no dry run" not in status.measured["dry_run"]
    assert status.plan["context_length"]["value"] == 8192


def test_a_conversations_context_length_reaches_the_plan_and_reloads_only_when_it_changes() -> None:
    engine = _engine(hardware.probe())
    chat = {"messages": [{"role": "user", "content": "Hi"}], "sampling": {"max_tokens": 4}}
    try:
        engine.chat(ChatParams.from_dict({**chat, "prefs": {"context_length": 1024}}), JobContext.detached())
        first = engine._backend
        assert engine.status(NoParams(), JobContext.detached()).settings["n_ctx"] == 1024
        engine.chat(ChatParams.from_dict({**chat, "prefs": {"context_length": 1024}}), JobContext.detached())
        assert engine._backend is first  # same plan: the loaded model and its cache are kept
        engine.chat(ChatParams.from_dict({**chat, "prefs": {"context_length": 2048}}), JobContext.detached())
        assert engine._backend is not first and engine.status(NoParams(), JobContext.detached()).settings["n_ctx"] == 2048
    finally:
        engine.close()


def test_status_shows_the_models_chat_template() -> None:
    engine = _engine(hardware.probe())
    try:
        status = engine.load(EngineLoadParams(), JobContext.detached())
    finally:
        engine.close()
    assert status.template_source == "model" and "<|im_start|>" in str(status.chat_template)


class _EngineOnly:
    """What the dispatcher needs of Services, with only the engine behind it."""

    def __init__(self, engine: EngineService) -> None:
        self.engine = engine

    def methods(self) -> list[MethodSpec[Any, Any]]:
        return self.engine.methods()

    def close(self) -> None:
        self.engine.close()


def test_a_cancelled_chat_ends_cancelled_with_its_partial_reply() -> None:
    events: queue.Queue[Event] = queue.Queue()
    dispatcher = Dispatcher(events.put, services=_EngineOnly(_engine(hardware.probe())))  # type: ignore[arg-type]
    try:
        dispatcher.submit(Request("c1", "chat", {"messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}],
                                                 "sampling": {"max_tokens": 400, "temperature": 0}}))
        streamed = []
        while True:
            event = events.get(timeout=120)
            if event.id != "c1":
                continue
            if event.event is EventKind.TOKEN:
                streamed.append(event.data["text"])
                if len(streamed) == 3:
                    dispatcher.submit(Request("x", "cancel", {"target": "c1"}))
            elif event.is_final:
                break
    finally:
        dispatcher.close()
    assert event.event is EventKind.RESULT, event.data
    assert event.data["status"] == "cancelled" and event.data["finish_reason"] == "cancelled"
    assert event.data["text"] and event.data["text"].startswith("".join(streamed[:3]))
    assert event.data["usage"]["completion_tokens"] < 400
