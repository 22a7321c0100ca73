"""The contract between the GUI and the worker: typed, versioned JSON-lines messages.

This is the only runtime module the UI imports, so it depends on nothing but the standard library.

- A request is ``{"id": str, "method": str, "params": {...}}``.
- An event is ``{"id": str | null, "event": kind, "data": {...}}``; ``id`` names the request it
  belongs to (null for the worker's ``hello`` and unsolicited ``log`` lines).
- Every request ends with exactly one ``result`` or one ``error`` event; ``token``, ``progress``
  and ``log`` events may come before it.
- The worker says ``hello`` with its protocol version first; a client refuses another version.

Every method is declared once (`app.runtime.jobs.MethodSpec`: a params dataclass, a result
dataclass, its `Mode` and a handler ``(params, JobContext) -> result``). Params are checked against
the declaration (`decode_params`): a missing, unknown or mistyped field is an ``invalid_params``
error naming the field.

How a job ends -- the same for every method:

- ``result`` with ``status: "done"``: it finished.
- ``cancel`` (params ``{"target": id}``) of a *running* job: it stops at its next check and ends as
  a ``result`` with ``status: "cancelled"``. What is useful is kept as it is (a chat's partial
  reply, a fine-tune's finished checkpoints); what cannot be resumed is removed (a half-written
  GGUF, a download's partial file).
- ``pause`` (params ``{"target": id}``) of a running job that can resume (a download, a training
  run): it stops and keeps what a later request resumes from; a ``result`` with
  ``status: "paused"``. A job that cannot resume treats a pause as a cancel.
- ``error`` of kind ``cancelled`` means only one thing: cancelled (or paused) *before it started*,
  while it waited in the queue. Every other error is a failure with its typed kind.

Progress events carry one record: ``stage``, ``done``/``total`` with a ``unit``, ``fraction``,
``eta_s`` and ``message`` (plus what the job adds, such as a loss or a plan).
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
    HUB_PARTIALS = "hub.partials"  # paused downloads left on disk (listed again after a restart)
    ENGINE_PLAN = "engine.plan"
    ENGINE_LOAD = "engine.load"
    ENGINE_UNLOAD = "engine.unload"
    ENGINE_STATUS = "engine.status"
    ENGINE_EMBED = "engine.embed"  # vectors from an embedding model, in a llama.cpp context beside the chat's
    CHAT = "chat"
    QUANTIZE_TARGETS = "quantize.targets"
    QUANTIZE_RUN = "quantize.run"
    QUANTIZE_IMATRIX = "quantize.imatrix"  # Hearth's importance matrix of a model (a child job)
    FINETUNE_PREPARE = "finetune.prepare"
    FINETUNE_TRAIN = "finetune.train"
    FINETUNE_EXPORT = "finetune.export"
    SERVER_START = "server.start"
    SERVER_STOP = "server.stop"
    SERVER_STATUS = "server.status"
    SERVER_LOG = "server.log"
    SERVER_GENERATE = "server.generate"  # one API request's generation, queued with the chats
    DOCS_ADD = "docs.add"  # index files and folders into a named document collection (a pausable job)
    DOCS_LIST = "docs.list"
    DOCS_REMOVE = "docs.remove"
    DOCS_SEARCH = "docs.search"
    MCP_SERVERS = "mcp.servers"  # the configured MCP servers, whether confirmed, and their problems
    MCP_TOOLS = "mcp.tools"  # the tools of the named servers as OpenAI function tools (starts them)
    MCP_CALL = "mcp.call"  # one tool call on one server, its result capped before it enters a context
    MCP_IMPORT = "mcp.import"  # an mcp.json merged into the settings' servers (read only: the studio saves)
    CANCEL = "cancel"
    PAUSE = "pause"
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


class JobStatus(str, Enum):
    """How a job that answered with a ``result`` ended (see the module's docstring)."""

    DONE = "done"
    CANCELLED = "cancelled"
    PAUSED = "paused"


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


# ---- typed params (the chat request itself: app.runtime.chat_params) ------------------------------


def checked(value: Any, types: type | tuple[type, ...], name: str) -> Any:
    # bool is an int in Python; a JSON true where a number is wanted is still a mistake.
    wanted = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in wanted:
        what = "a number" if int in wanted or float in wanted else "a string" if str in wanted else "another type"
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'{name}' must be {what}, not {value!r}")
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
        if raw is not None and not isinstance(raw, dict):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'sampling' must be an object, not {raw!r}")
        raw = dict(raw or {})
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"unknown sampling option(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for name in ("temperature", "top_p", "min_p", "repeat_penalty"):
            if name in raw:
                values[name] = float(checked(raw[name], (int, float), name))
        for name in ("top_k", "max_tokens"):
            if name in raw:
                values[name] = checked(raw[name], int, name)
        if raw.get("seed") is not None:
            values["seed"] = checked(raw["seed"], int, "seed")
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


# ---- declared params and results ----------------------------------------------------------------
#
# A method's params and result are dataclasses. `decode_params` checks a request's raw object
# against the params class's annotations (str, int, float, bool, Any, X | None, list[X],
# tuple[X, ...], dict[str, X], Literal[...], nested dataclasses); a class with its own
# ``from_dict`` (Sampling, `app.runtime.chat_params.ChatParams`) validates itself. `encode_result` turns a result dataclass
# into the JSON object of the ``result`` event.


@dataclass(frozen=True)
class NoParams:
    """Params of a method that takes none."""


def decode_params(cls: type, raw: Any, where: str = "") -> Any:
    """``raw`` as an instance of the dataclass ``cls``, or an INVALID_PARAMS failure naming the field."""
    import dataclasses
    import typing

    if isinstance(raw, cls):
        return raw
    custom = cls.__dict__.get("from_dict")
    if custom is not None:
        if not isinstance(raw, dict):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'{where or 'params'}' must be an object")
        return cls.from_dict(raw)
    if not isinstance(raw, dict):
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'{where or 'params'}' must be an object")
    hints = typing.get_type_hints(cls)
    declared = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(declared))
    if unknown:
        known = ", ".join(sorted(declared)) or "none"
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"unknown parameter(s) {', '.join(_dotted(where, u) for u in unknown)} (known: {known})")
    values: dict[str, Any] = {}
    for name, f in declared.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'{_dotted(where, name)}' is required")
            continue
        values[name] = _coerce(hints[name], raw[name], _dotted(where, name))
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:  # a __post_init__ that refuses a combination
        if isinstance(exc, RuntimeFailure):
            raise
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, str(exc)) from None


def _dotted(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _coerce(hint: Any, value: Any, name: str) -> Any:
    import dataclasses
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _coerce(option, value, name)
            except RuntimeFailure:
                if len(options) == 1:
                    raise
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'{name}' has the wrong type: {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'{name}' must be one of {', '.join(repr(a) for a in args)}, not {value!r}")
        return value
    if origin in (list, tuple, set, frozenset):
        if not isinstance(value, list):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'{name}' must be a list, not {value!r}")
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{name}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else origin(items)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'{name}' must be an object, not {value!r}")
        if not args:
            return dict(value)
        if not all(isinstance(k, str) for k in value):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'{name}' must have string keys")
        return {k: _coerce(args[1], v, f"{name}.{k}") for k, v in value.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return decode_params(hint, value, name)
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'{name}' must be one of {', '.join(repr(m.value) for m in hint)}, not {value!r}") from None
    if hint is float:
        return float(checked(value, (int, float), name))
    if hint in (int, str, bool):
        if hint is bool and not isinstance(value, bool):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'{name}' must be true or false, not {value!r}")
        return checked(value, hint, name)
    raise TypeError(f"decode_params cannot check a field of type {hint!r} ({name})")  # a declaration bug


OMIT_NONE = "hearth.omit_none"


def omitted_when_none(default: Any = None) -> Any:
    """A result field that is left out of the JSON while it is None: for a key that only some
    results carry (an unloaded engine has no ``model``), so that readers see the same object."""
    return field(default=default, metadata={OMIT_NONE: True})


def encode_result(result: Any) -> dict[str, Any]:
    """A handler's result as the ``result`` event's data (a dataclass, or already a dict)."""
    import dataclasses

    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        data = {f.name: _plain(getattr(result, f.name)) for f in dataclasses.fields(result)
                if not (f.metadata.get(OMIT_NONE) and getattr(result, f.name) is None)}
    elif isinstance(result, dict):
        data = {str(k): _plain(v) for k, v in result.items()}
    else:
        raise TypeError(f"a handler returned {type(result).__name__}, not its result dataclass")
    return data


def _plain(value: Any) -> Any:
    import dataclasses
    import os

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        to_dict = getattr(value, "to_dict", None)
        return _plain(to_dict()) if callable(to_dict) else encode_result(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
