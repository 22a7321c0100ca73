"""The live acceptance rate: while a reply streams, the engine reports what speculation has done so
far as "speculation" progress events, through the real client, dispatcher, engine and embedded
model; a reply without speculation reports none; the CLI does not draw them; and the throttle both
backends share reports at most once per interval, and always after the first verified guess.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest

from app.cli.console import Console
from app.cli.runner import Session
from app.runtime.backends.hooks import Speculation, SpeculationReporter
from app.runtime.inprocess import InProcessClient
from app.runtime.protocol import EventKind, Method

TEXT = ("The keeper climbed the stairs at dusk with a brass lantern and a notebook, and wrote down the colour of the sea, "
        "the wind, and the names of the ships that passed the rocks before the light was lit.")
COPY = [{"role": "user", "content": "Copy this text exactly:\n\n" + TEXT}]
COUNTS = ("steps", "drafted", "accepted")


@pytest.fixture(scope="module")
def client() -> Iterator[InProcessClient]:
    owned = InProcessClient()  # the whole runtime in process: the CLI's client, the worker's dispatcher
    yield owned
    owned.close()


def _chat(client: InProcessClient, speculate: str, max_tokens: int = 48) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The "speculation" reports that came before the result, and the result."""
    live: list[dict[str, Any]] = []
    params = {"messages": COPY, "sampling": {"temperature": 0, "max_tokens": max_tokens}, "speculate": speculate}
    for event in client.stream(Method.CHAT, params, timeout=300):
        if event.event is EventKind.PROGRESS and event.data.get("stage") == "speculation":
            assert event.data["message"]  # a few words, for anything that shows progress messages
            live.append(event.data["speculation"])
        elif event.event is EventKind.RESULT:
            return live, event.data
    raise AssertionError("stream() ends with a result")


def test_a_speculating_reply_reports_its_numbers_while_it_streams(client: InProcessClient) -> None:
    live, result = _chat(client, "lookup")
    final = result["speculation"]
    assert not final.get("off") and final["steps"] > 0, final
    assert live, "no live report came before the result"
    assert live[0]["steps"] == 1  # the first verified guess is always reported
    for earlier, later in zip(live, live[1:]):
        assert all(earlier[k] <= later[k] for k in COUNTS), (earlier, later)
    for report in live:
        assert all(report[k] <= final[k] for k in COUNTS), (report, final)
        assert report["accepted"] <= report["drafted"] and 0 < report["tokens"] <= result["usage"]["completion_tokens"]
        assert "plan" not in report  # the plan is the final result's, not resent a few times a second


def test_a_reply_without_speculation_reports_none(client: InProcessClient) -> None:
    live, result = _chat(client, "off", max_tokens=8)
    assert live == [] and result["usage"]["completion_tokens"] > 0


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Tap:
    """The module's client, keeping a copy of every event it hands the CLI."""

    def __init__(self, client: InProcessClient) -> None:
        self._client = client
        self.events: list[Any] = []

    def submit(self, method: Any, params: Any = None, on_event: Any = None) -> str:
        def both(event: Any) -> None:
            self.events.append(event)
            on_event(event)

        return self._client.submit(method, params, both)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_the_cli_does_not_draw_the_live_numbers(client: InProcessClient) -> None:
    err, tap = _Terminal(), _Tap(client)
    session = Session(Console(out=io.StringIO(), err=err))
    session._client = tap  # the module's runtime, already loaded (the session does not own it: no close)
    result = session.run(Method.CHAT, {"messages": COPY, "sampling": {"temperature": 0, "max_tokens": 48}, "speculate": "lookup"},
                         progress=True, on_token=lambda _: None)
    assert result["speculation"]["steps"] > 0
    assert any(e.event is EventKind.PROGRESS and e.data.get("stage") == "speculation" for e in tap.events)
    assert "accepted" not in err.getvalue()  # the live reports came, and none was drawn on the terminal line


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_throttle_reports_the_first_verified_guess_then_at_most_once_per_interval() -> None:
    clock, sent = _Clock(), []
    reporter = SpeculationReporter(sent.append, interval=0.25, clock=clock)
    spec = Speculation(plan={"drafter": "lookup"})
    reporter.step(spec, tokens=1)
    assert sent == []  # nothing verified yet: nothing to say
    spec.steps, spec.drafted, spec.accepted = 1, 4, 3
    reporter.step(spec, tokens=4)
    assert sent == [{"steps": 1, "drafted": 4, "accepted": 3, "acceptance": 0.75, "tokens": 4}]  # at once, without the plan
    for i in range(2, 10):  # eight more steps within the interval
        clock.now += 0.02
        spec.steps += 1
        reporter.step(spec, tokens=4 + i)
    assert len(sent) == 1
    clock.now = 100.0 + 0.25
    reporter.step(spec, tokens=20)
    assert len(sent) == 2 and sent[-1]["steps"] == 9
    clock.now += 1.0
    reporter.step(spec, tokens=21)  # the interval passed, but no new step was verified
    assert len(sent) == 2
    spec.steps += 1
    reporter.step(spec, tokens=22)
    assert len(sent) == 3 and sent[-1]["steps"] == 10

