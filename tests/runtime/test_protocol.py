"""The protocol's messages: round trips, and every malformed line turned into a typed error."""

from __future__ import annotations

import json

import pytest

from app.runtime.chat_params import ChatParams

from app.runtime.protocol import ErrorKind, Event, EventKind, ProtocolError, Request, RuntimeFailure, Sampling, decode_event, decode_request


def test_request_round_trip() -> None:
    request = Request("r1", "chat", {"messages": [{"role": "user", "content": "héllo\n"}]})
    assert decode_request(request.encode()) == request
    assert request.encode().endswith("\n") and request.encode().count("\n") == 1


def test_event_round_trip() -> None:
    for event in (
        Event("r1", EventKind.TOKEN, {"text": "a\nb"}),
        Event(None, EventKind.HELLO, {"protocol": 1}),
        Event.error("r2", ErrorKind.MODEL_INVALID, "bad file"),
    ):
        assert decode_event(event.encode()) == event
    assert Event.error("r", ErrorKind.INTERNAL, "x").is_final and not Event("r", EventKind.TOKEN).is_final


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b"not json at all", ErrorKind.BAD_MESSAGE),
        (b"\xff\xfe", ErrorKind.BAD_MESSAGE),
        (b"[1, 2]", ErrorKind.BAD_MESSAGE),
        (b'{"method": "ping"}', ErrorKind.BAD_MESSAGE),
        (b'{"id": 5, "method": "ping"}', ErrorKind.BAD_MESSAGE),
        (b'{"id": "r1", "method": 3}', ErrorKind.BAD_MESSAGE),
        (b'{"id": "r1", "method": "ping", "params": [1]}', ErrorKind.INVALID_PARAMS),
    ],
)
def test_malformed_requests(line: bytes, kind: ErrorKind) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_request(line)
    assert info.value.kind is kind


def test_a_malformed_request_keeps_its_id_when_it_has_one() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_request(b'{"id": "r9", "method": "chat", "params": "x"}')
    assert info.value.request_id == "r9"


def test_unknown_event_kind() -> None:
    with pytest.raises(ProtocolError):
        decode_event(json.dumps({"id": "r1", "event": "explode", "data": {}}))


def test_sampling_validation() -> None:
    assert Sampling.from_dict(None) == Sampling()
    s = Sampling.from_dict({"temperature": 0, "max_tokens": 5, "stop": "END", "seed": 3})
    assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.0, 5, ("END",), 3)
    for bad in ({"temperature": "hot"}, {"max_tokens": 0}, {"top_p": 2}, {"max_tokens": True}, {"stop": [""]}, {"nope": 1}, {"temperature": float("nan")}):
        with pytest.raises(RuntimeFailure) as info:
            Sampling.from_dict(bad)
        assert info.value.kind is ErrorKind.INVALID_PARAMS


def test_chat_params_validation() -> None:
    ok = ChatParams.from_dict({"messages": [{"role": "user", "content": "hi"}]})
    assert ok.messages == ({"role": "user", "content": "hi"},) and ok.model is None
    assert ChatParams.from_dict(ok.to_dict()) == ok
    for bad in ({}, {"messages": []}, {"messages": ["hi"]}, {"messages": [{"role": "robot", "content": "x"}]}, {"messages": [{"role": "user", "content": 1}]}):
        with pytest.raises(RuntimeFailure) as info:
            ChatParams.from_dict(bad)
        assert info.value.kind is ErrorKind.INVALID_PARAMS
