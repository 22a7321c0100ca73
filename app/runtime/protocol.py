"""The contract between the GUI and the worker: typed, versioned JSON-lines messages.

This is the only runtime module the UI imports, so it depends on nothing but the standard library.

- A request is ``{"id": str, "method": str, "params": {...}}``.
- An event is ``{"id": str | null, "event": kind, "data": {...}}``; ``id`` names the request it
  belongs to (null for the worker's ``hello`` and unsolicited ``log`` lines).
- Every request ends with exactly one ``result`` or one ``error`` event; ``token``, ``progress``
  and ``log`` events may come before it.
- ``cancel`` is an ordinary request whose params name the request to stop; the stopped request
  still ends with its own ``result`` (``finish_reason: "cancelled"``) or ``error``.
- The worker says ``hello`` with its protocol version first; a client refuses another version.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any

PROTOCOL_VERSION = 1


class Method(str, Enum):
    PING = "ping"
    HARDWARE = "hardware"
    MODELS_LIST = "models.list"
    MODELS_DELETE = "models.delete"
    MODELS_ADD_FOLDER = "models.add_folder"
    MODELS_DETAILS = "models.details"
    MODELS_IMPORT = "models.import"
    HUB_SEARCH = "hub.search"
    HUB_FILES = "hub.files"
    HUB_DOWNLOAD = "hub.download"
    HUB_DISCARD = "hub.discard"
    ENGINE_PLAN = "engine.plan"
    ENGINE_LOAD = "engine.load"
    ENGINE_UNLOAD = "engine.unload"
    ENGINE_STATUS = "engine.status"
    CHAT = "chat"
    QUANTIZE_TARGETS = "quantize.targets"
    QUANTIZE_RUN = "quantize.run"
    FINETUNE_PREPARE = "finetune.prepare"
    FINETUNE_TRAIN = "finetune.train"
    FINETUNE_EXPORT = "finetune.export"
    SERVER_START = "server.start"
    SERVER_STOP = "server.stop"
    SERVER_STATUS = "server.status"
    SERVER_LOG = "server.log"
    SERVER_GENERATE = "server.generate"  # one API request's generation, queued with the chats
    CANCEL = "cancel"
    SHUTDOWN = "shutdown"


class EventKind(str, Enum):
    HELLO = "hello"
    TOKEN = "token"
    PROGRESS = "progress"
    LOG = "log"
    RESULT = "result"
    ERROR = "error"


class ErrorKind(str, Enum):
    """Why a request failed; the UI maps each kind to words and an action."""

    BAD_MESSAGE = "bad_message"  # not JSON, or not a request object
    UNKNOWN_METHOD = "unknown_method"
    INVALID_PARAMS = "invalid_params"
    MODEL_NOT_FOUND = "model_not_found"
    MODEL_INVALID = "model_invalid"  # truncated, corrupted or not a model
    LOAD_FAILED = "load_failed"
    OUT_OF_MEMORY = "out_of_memory"
    DISK_FULL = "disk_full"  # not enough free space for an output; nothing half-written is left
    UNSUPPORTED = "unsupported"
    BUSY = "busy"
    CANCELLED = "cancelled"  # a queued request cancelled before it started
    WORKER_DIED = "worker_died"  # said by the client, never by the worker
    REMOTE_FAILED = "remote_failed"  # a remote engine refused, timed out or answered nonsense
    PROTOCOL_MISMATCH = "protocol_mismatch"
    INTERNAL = "internal"


class ProtocolError(ValueError):
    """A line that is not a valid message."""

    def __init__(self, kind: ErrorKind, message: str, request_id: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.request_id = request_id


class RuntimeFailure(Exception):
    """A request that failed with a typed kind; raised by services, carried by error events."""

    def __init__(self, kind: ErrorKind, message: str, *, detail: str = ""):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.detail = detail


@dataclass(frozen=True)
class Request:
    id: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> str:
        return json.dumps({"id": self.id, "method": self.method, "params": self.params}) + "\n"


@dataclass(frozen=True)
class Event:
    id: str | None
    event: EventKind
    data: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> str:
        return json.dumps({"id": self.id, "event": self.event.value, "data": self.data}) + "\n"

    @property
    def is_final(self) -> bool:
        return self.event in (EventKind.RESULT, EventKind.ERROR)

    @staticmethod
    def error(request_id: str | None, kind: ErrorKind, message: str, detail: str = "") -> Event:
        return Event(request_id, EventKind.ERROR, {"kind": kind.value, "message": message, "detail": detail})


def decode_request(line: str | bytes) -> Request:
    obj = _parse_object(line)
    request_id = obj.get("id")
    if not isinstance(request_id, str) or not request_id:
        raise ProtocolError(ErrorKind.BAD_MESSAGE, "a request needs a non-empty string 'id'")
    method = obj.get("method")
    if not isinstance(method, str):
        raise ProtocolError(ErrorKind.BAD_MESSAGE, "a request needs a string 'method'", request_id)
    params = obj.get("params", {})
    if not isinstance(params, dict):
        raise ProtocolError(ErrorKind.INVALID_PARAMS, "'params' must be an object", request_id)
    return Request(request_id, method, params)


def decode_event(line: str | bytes) -> Event:
    obj = _parse_object(line)
    try:
        kind = EventKind(obj.get("event"))
    except ValueError:
        raise ProtocolError(ErrorKind.BAD_MESSAGE, f"unknown event {obj.get('event')!r}") from None
    request_id = obj.get("id")
    data = obj.get("data", {})
    if request_id is not None and not isinstance(request_id, str) or not isinstance(data, dict):
        raise ProtocolError(ErrorKind.BAD_MESSAGE, "an event needs a string or null 'id' and an object 'data'")
    return Event(request_id, kind, data)


def _parse_object(line: str | bytes) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorKind.BAD_MESSAGE, f"not a JSON line: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorKind.BAD_MESSAGE, "a message must be a JSON object")
    return obj


# ---- typed params -------------------------------------------------------------------------------


def _check(value: Any, types: type | tuple[type, ...], name: str) -> Any:
    # bool is an int in Python; a JSON true where a number is wanted is still a mistake.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'{name}' must be a number, not {value!r}")
    if not isinstance(value, types):
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'{name}' has the wrong type: {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'{name}' must be finite")
    return value


@dataclass(frozen=True)
class Sampling:
    """Generation settings. Defaults that keep a small model from looping (a repeat penalty)."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    max_tokens: int = 512
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Sampling:
        raw = dict(raw or {})
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"unknown sampling option(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for name in ("temperature", "top_p", "min_p", "repeat_penalty"):
            if name in raw:
                values[name] = float(_check(raw[name], (int, float), name))
        for name in ("top_k", "max_tokens"):
            if name in raw:
                values[name] = _check(raw[name], int, name)
        if raw.get("seed") is not None:
            values["seed"] = _check(raw["seed"], int, "seed")
        if "stop" in raw:
            stop = raw["stop"]
            if isinstance(stop, str):
                stop = [stop]
            if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
                raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'stop' must be a list of non-empty strings")
            values["stop"] = tuple(stop)
        sampling = cls(**values)
        sampling.validate()
        return sampling

    def validate(self) -> None:
        if self.temperature < 0:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "temperature must be 0 or more")
        if not 0 < self.top_p <= 1 or not 0 <= self.min_p <= 1:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "top_p must be in (0, 1] and min_p in [0, 1]")
        if self.top_k < 0 or self.repeat_penalty <= 0:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "top_k must be 0 or more and repeat_penalty above 0")
        if self.max_tokens < 1:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "max_tokens must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stop"] = list(self.stop)
        return data


ROLES = ("system", "user", "assistant")
# What happens when a conversation outgrows the model's context (as in LM Studio): forget the oldest
# turns after the system prompt, forget the turns after the first one, or refuse with "context is full".
CONTEXT_POLICIES = ("rolling_window", "truncate_middle", "stop_at_limit")


@dataclass(frozen=True)
class ChatParams:
    messages: tuple[dict[str, str], ...]
    model: str | None = None  # a library id or a file path; None = the loaded or default model
    backend: str = "auto"
    sampling: Sampling = field(default_factory=Sampling)
    context_policy: str = "rolling_window"  # one of CONTEXT_POLICIES
    chat_template: str | None = None  # a Jinja chat template used instead of the model's
    prefs: dict[str, Any] = field(default_factory=dict)  # planner preferences for this chat (e.g. context_length)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ChatParams:
        messages = raw.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'messages' must be a non-empty list")
        clean = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"message {i} must be an object")
            role, content = message.get("role"), message.get("content")
            if role not in ROLES:
                raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"message {i} has an unknown role {role!r}")
            if not isinstance(content, str):
                raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"message {i} needs string content")
            clean.append({"role": role, "content": content})
        model = raw.get("model")
        if model is not None:
            _check(model, str, "model")
        policy = _check(raw.get("context_policy", "rolling_window"), str, "context_policy")
        if policy not in CONTEXT_POLICIES:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'context_policy' must be one of {', '.join(CONTEXT_POLICIES)}, not {policy!r}")
        template = raw.get("chat_template")
        if template is not None and (not isinstance(template, str) or not template.strip()):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'chat_template' must be a non-empty Jinja template string")
        return cls(
            messages=tuple(clean),
            model=model,
            backend=_check(raw.get("backend", "auto"), str, "backend"),
            sampling=Sampling.from_dict(raw.get("sampling")),
            context_policy=policy,
            chat_template=template,
            prefs=dict(_check(raw.get("prefs") or {}, dict, "prefs")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "messages": list(self.messages),
            "model": self.model,
            "backend": self.backend,
            "sampling": self.sampling.to_dict(),
            "context_policy": self.context_policy,
            "chat_template": self.chat_template,
            "prefs": dict(self.prefs),
        }
