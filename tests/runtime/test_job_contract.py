"""The job contract's core: params checked against their declaration, results encoded, one
progress record, and how a stopped job ends."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from app.runtime.jobs import JobContext, JobStopped
from app.runtime.protocol import ErrorKind, Event, EventKind, JobStatus, RuntimeFailure, decode_params, encode_result


@dataclass(frozen=True)
class Inner:
    name: str
    weight: float = 1.0


@dataclass(frozen=True)
class Example:
    model: str
    limit: int = 30
    ratio: float = 0.5
    flag: bool = False
    files: tuple[str, ...] = ()
    sort: Literal["downloads", "likes"] = "downloads"
    revision: str | None = None
    inner: Inner | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def test_a_valid_object_becomes_the_dataclass() -> None:
    got = decode_params(Example, {"model": "m", "limit": 3, "ratio": 2, "files": ["a", "b"], "sort": "likes",
                                  "inner": {"name": "x"}, "extra": {"k": [1]}})
    assert got == Example("m", 3, 2.0, False, ("a", "b"), "likes", None, Inner("x"), {"k": [1]})
    assert isinstance(got.ratio, float)


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({}, "'model' is required"),
        ({"model": "m", "lmit": 3}, "lmit"),
        ({"model": 5}, "'model'"),
        ({"model": "m", "limit": "3"}, "'limit'"),
        ({"model": "m", "limit": True}, "'limit' must be a number"),
        ({"model": "m", "flag": 1}, "'flag' must be true or false"),
        ({"model": "m", "files": "a"}, "'files' must be a list"),
        ({"model": "m", "files": ["a", 2]}, "'files[1]'"),
        ({"model": "m", "sort": "stars"}, "'sort' must be one of"),
        ({"model": "m", "inner": {"weight": 2}}, "'inner.name' is required"),
        ({"model": "m", "ratio": float("nan")}, "'ratio' must be finite"),
    ],
)
def test_a_bad_field_is_invalid_params_naming_it(raw: dict[str, Any], named: str) -> None:
    with pytest.raises(RuntimeFailure) as caught:
        decode_params(Example, raw)
    assert caught.value.kind is ErrorKind.INVALID_PARAMS
    assert named in caught.value.message


def test_results_encode_nested_dataclasses_paths_and_enums() -> None:
    @dataclass
    class Result:
        path: Path
        status: JobStatus
        inner: Inner
        rows: list[Inner]

    data = encode_result(Result(Path("/tmp/x"), JobStatus.PAUSED, Inner("a"), [Inner("b", 2.0)]))
    assert data == {"path": "/tmp/x", "status": "paused", "inner": {"name": "a", "weight": 1.0}, "rows": [{"name": "b", "weight": 2.0}]}


def test_progress_is_one_record_with_fraction_from_done_and_total() -> None:
    events: list[Event] = []
    ctx = JobContext("r1", events.append)
    ctx.progress("download", done=25, total=100, unit="bytes", message="a quarter", file="x.gguf")
    (event,) = events
    assert event.event is EventKind.PROGRESS and event.id == "r1"
    assert event.data == {"stage": "download", "done": 25, "total": 100, "unit": "bytes", "fraction": 0.25,
                          "eta_s": None, "message": "a quarter", "file": "x.gguf"}


def test_pause_of_a_job_that_cannot_resume_is_a_cancel() -> None:
    plain, resumable = JobContext("a", lambda e: None), JobContext("b", lambda e: None, pausable=True)
    plain.pause()
    resumable.pause()
    assert plain.stop_requested is JobStatus.CANCELLED
    assert resumable.stop_requested is JobStatus.PAUSED
    with pytest.raises(JobStopped) as caught:
        resumable.check("stopped", partial_bytes=10)
    assert caught.value.status is JobStatus.PAUSED and caught.value.kept == {"partial_bytes": 10}
