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


# ---- typed params -------------------------------------------------------------------------------


def _check(value: Any, types: type | tuple[type, ...], name: str) -> Any:
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
    # {"collection": NAME, "query"?: text to search (default: the newest user message), "max_passages"?: 1-20}:
    # answer from a document collection (app.runtime.docs.chat); the result's `docs` says what went in and why
    docs: dict[str, Any] | None = None
    # Tool calling (issue 17; app.runtime.tools): OpenAI function tools {"type": "function", "function":
    # {"name", "description"?, "parameters"?}}; tool_choice "auto" | "none" | "required" |
    # {"type": "function", "function": {"name"}}; the result's tool_calls / finish_reason "tool_calls"
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | dict[str, Any] = "auto"
    parallel_tool_calls: bool = True
    # Speculative decoding (issue 18; app.runtime.spec): "auto" | "off" | "lookup" | "draft:MODEL";
    # None = the person's saved setting. The result's `speculation` says what it did and why.
    speculate: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ChatParams:
        unknown = sorted(set(raw) - {f.name for f in fields(cls)})
        if unknown:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"unknown parameter(s) {', '.join(unknown)} (known: {', '.join(f.name for f in fields(cls))})")
        messages = raw.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'messages' must be a non-empty list")
        clean = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'messages[{i}]' must be an object")
            role, content = message.get("role"), message.get("content")
            if role in TOOL_ROLES or message.get("tool_calls"):
                clean.append(_tool_message(message, i))
                continue
            if role not in ROLES:
                raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'messages[{i}]' has an unknown role {role!r}")
            if not isinstance(content, str):
                raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'messages[{i}]' needs string content")
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
            docs=_docs_request(raw.get("docs")),
            tools=_tools(raw.get("tools")),
            tool_choice=_tool_choice(raw.get("tool_choice", "auto")),
            parallel_tool_calls=_check(raw.get("parallel_tool_calls", True), bool, "parallel_tool_calls"),
            speculate=_speculate(raw.get("speculate")),
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
            **({"docs": dict(self.docs)} if self.docs is not None else {}),
            **({"tools": list(self.tools), "tool_choice": self.tool_choice, "parallel_tool_calls": self.parallel_tool_calls} if self.tools else {}),
            **({"speculate": self.speculate} if self.speculate is not None else {}),
        }


SPECULATE_MODES = ("auto", "off", "lookup")  # or "draft:MODEL" (a library id, name or path)


def _speculate(raw: Any) -> str | None:
    """ChatParams.speculate checked: None, one of SPECULATE_MODES, or draft:MODEL."""
    if raw is None:
        return None
    value = _check(raw, str, "speculate").strip()
    if value in SPECULATE_MODES or (value.startswith("draft:") and value[len("draft:"):].strip()):
        return value
    raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'speculate' must be auto, off, lookup or draft:MODEL, not {raw!r}")


TOOL_ROLES = ("tool",)  # a tool's result: {"role": "tool", "tool_call_id", "content"}
_TOOL_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _tool_message(message: dict[str, Any], i: int) -> dict[str, Any]:
    """A tool result, or an assistant message carrying tool_calls (content "" or null), checked and copied."""
    where = f"'messages[{i}]'"
    role, content = message.get("role"), message.get("content")
    if role == "tool":
        if not isinstance(message.get("tool_call_id"), str) or not message["tool_call_id"]:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{where} is a tool result and needs the 'tool_call_id' it answers")
        if not isinstance(content, str):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{where} needs string content (the tool's result)")
        return {"role": "tool", "tool_call_id": message["tool_call_id"], "content": content}
    if role != "assistant":
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{where}: only assistant messages carry tool_calls")
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{where}.tool_calls must be a list")
    clean = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(call.get("id"), str):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{where}.tool_calls[{j}] needs an 'id' and a function with a 'name'")
        arguments = fn.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)  # a client that sent the object itself
        clean.append({"id": call["id"], "type": "function", "function": {"name": fn["name"], "arguments": arguments}})
    if content is not None and not isinstance(content, str):
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{where} needs string content (or null beside tool_calls)")
    return {"role": "assistant", "content": content or "", "tool_calls": clean}


def _tools(raw: Any) -> tuple[dict[str, Any], ...]:
    """ChatParams.tools checked for shape (the JSON schemas themselves are checked by app.runtime.tools.schema)."""
    if raw is None:
        return ()
    _check(raw, list, "tools")
    out = []
    for i, tool in enumerate(raw):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'tools[{i}]' must be {{\"type\": \"function\", \"function\": {{...}}}}")
        name = fn.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 64 or set(name) - _TOOL_NAME_CHARS:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'tools[{i}].function.name' must be 1-64 letters, digits, _ or -")
        if fn.get("description") is not None:
            _check(fn["description"], str, f"tools[{i}].function.description")
        if fn.get("parameters") is not None:
            _check(fn["parameters"], dict, f"tools[{i}].function.parameters")
        out.append({"type": "function", "function": {k: v for k, v in fn.items() if k in ("name", "description", "parameters") and v is not None}})
    return tuple(out)


def _tool_choice(raw: Any) -> str | dict[str, Any]:
    if raw in ("auto", "none", "required"):
        return str(raw)
    fn = raw.get("function") if isinstance(raw, dict) else None
    if isinstance(fn, dict) and isinstance(fn.get("name"), str) and raw.get("type", "function") == "function":
        return {"type": "function", "function": {"name": fn["name"]}}
    raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'tool_choice' must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}")


def _docs_request(raw: Any) -> dict[str, Any] | None:
    """ChatParams.docs checked: a collection name, and optionally the query and how many passages."""
    if raw is None:
        return None
    _check(raw, dict, "docs")
    unknown = sorted(set(raw) - {"collection", "query", "max_passages"})
    if unknown:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"unknown 'docs' field(s) {', '.join(unknown)} (known: collection, query, max_passages)")
    if not isinstance(raw.get("collection"), str) or not raw["collection"]:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'docs.collection' must name a document collection")
    if raw.get("query") is not None:
        _check(raw["query"], str, "docs.query")
    passages = _check(raw.get("max_passages", 8), int, "docs.max_passages")
    if not 1 <= passages <= 20:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'docs.max_passages' must be from 1 to 20")
    return {"collection": raw["collection"], "query": raw.get("query"), "max_passages": passages}


# ---- declared params and results ----------------------------------------------------------------
#
# A method's params and result are dataclasses. `decode_params` checks a request's raw object
# against the params class's annotations (str, int, float, bool, Any, X | None, list[X],
# tuple[X, ...], dict[str, X], Literal[...], nested dataclasses); a class with its own
# ``from_dict`` (ChatParams, Sampling) validates itself. `encode_result` turns a result dataclass
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
        return float(_check(value, (int, float), name))
    if hint in (int, str, bool):
        if hint is bool and not isinstance(value, bool):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'{name}' must be true or false, not {value!r}")
        return _check(value, hint, name)
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
