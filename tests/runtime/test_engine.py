"""The engine service in process: plan, dry run when the plan is tight, load, status."""

from __future__ import annotations

import dataclasses

from app.runtime import hardware, library
from app.runtime.jobs import JobState
from app.runtime.protocol import Event, EventKind
from app.runtime.services.engine import EngineService


def _engine(hw: hardware.Hardware) -> EngineService:
    models = library.scan([])
    return EngineService(models=lambda: models, hardware=lambda: hw, default_prefs=lambda: {})


def test_a_roomy_plan_loads_without_a_dry_run_and_reports_what_it_used() -> None:
    engine = _engine(hardware.probe())
    events: list[Event] = []
    try:
        status = engine.load({}, JobState("t1", events.append))
    finally:
        engine.close()
    stages = [e.data["stage"] for e in events if e.event is EventKind.PROGRESS]
    assert stages == ["planned", "loading", "loaded"]
    assert status["loaded"] and status["settings"]["n_ctx"] == status["plan"]["context_length"]["value"]
    assert status["measured"]["dry_run"].startswith("no dry run") and status["measured"]["fallback"] == []
    assert status["measured"]["rss_increase_bytes"] > 0


def test_a_tight_plan_is_confirmed_by_a_dry_run_first() -> None:
    probed = hardware.probe()
    # 1 GiB is the planner's RAM margin; leave about 600 MB above it, so SmolLM2's plan is tight.
    tight = dataclasses.replace(probed, ram_available=2**30 + 600 * 2**20)
    engine = _engine(tight)
    events: list[Event] = []
    try:
        status = engine.load({"prefs": {"context_length": 8192}}, JobState("t2", events.append))
    finally:
        engine.close()
    stages = [e.data["stage"] for e in events if e.event is EventKind.PROGRESS]
    assert stages[:2] == ["checking", "planned"]
    assert "dry run" in status["measured"]["dry_run"] and "no dry run" not in status["measured"]["dry_run"]
    assert status["plan"]["context_length"]["value"] == 8192


def test_a_conversations_context_length_reaches_the_plan_and_reloads_only_when_it_changes() -> None:
    engine = _engine(hardware.probe())
    chat = {"messages": [{"role": "user", "content": "Hi"}], "sampling": {"max_tokens": 4}}
    try:
        engine.chat({**chat, "prefs": {"context_length": 1024}}, JobState("c1", lambda e: None))
        first = engine._backend
        assert engine.status({}, JobState("s", lambda e: None))["settings"]["n_ctx"] == 1024
        engine.chat({**chat, "prefs": {"context_length": 1024}}, JobState("c2", lambda e: None))
        assert engine._backend is first  # same plan: the loaded model and its cache are kept
        engine.chat({**chat, "prefs": {"context_length": 2048}}, JobState("c3", lambda e: None))
        assert engine._backend is not first and engine.status({}, JobState("s", lambda e: None))["settings"]["n_ctx"] == 2048
    finally:
        engine.close()


def test_status_shows_the_models_chat_template() -> None:
    engine = _engine(hardware.probe())
    try:
        status = engine.load({}, JobState("t", lambda e: None))
    finally:
        engine.close()
    assert status["template_source"] == "model" and "<|im_start|>" in status["chat_template"]
