"""Typed user settings with a schema version and migrations.

The file is JSON in the user config folder. Unknown keys from a newer Hearth are kept, so that a
downgrade never throws the user's choices away; a file that cannot be read or understood (not a
JSON object, a schema version below 1) is moved aside (never deleted) and defaults are used, with
the reason logged. Every known field is checked for its type and range on load (`FIELD_CHECKS`):
a wrong one falls back to its default with a logged warning, so a hand-edited `"model_dirs": "/x"`
never becomes the folders "/" and "x".

The file holds secrets (the server's API key, remote engines' keys), so it is written readable by
its owner only (0600) and `Settings` never shows a key in its repr (logs, tracebacks).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from app.paths import paths

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2


def _v1_to_v2(raw: dict[str, Any]) -> dict[str, Any]:
    """Version 2 added the server, remote engines, theme, per-model backends and first run; a
    person who already used Hearth has seen the studio, so the welcome is not shown again."""
    raw.setdefault("first_run_done", True)
    return raw


# Each step turns the dict of schema version N into version N+1.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}


SECRET_MASK = "***"


@dataclass
class Settings:
    schema_version: int = SCHEMA_VERSION
    model_dirs: list[str] = field(default_factory=list)
    default_model: str | None = None  # a model id from the library; None = the embedded model
    default_backend: str = "auto"
    n_threads: int | None = None  # None = chosen from the hardware
    context_length: int | None = None  # None = chosen from the model and the hardware
    model_backends: dict[str, str] = field(default_factory=dict)  # model id -> "llama.cpp" | "torch" (absent = auto)
    theme: str = "system"  # "system" | "light" | "dark"
    first_run_done: bool = False
    # The OpenAI-compatible server (hearth serve, the Server page).
    server_host: str = "127.0.0.1"
    server_port: int = 8080
    server_api_key: str | None = None  # required when server_host is not a loopback address
    server_cors_origins: list[str] = field(default_factory=list)  # empty = CORS off
    server_queue_limit: int = 16  # requests waiting or running; past it the server answers 429
    server_max_tokens: int = 4096  # the most tokens one request may ask for
    # Remote OpenAI-compatible engines: [{"name": ..., "url": ..., "api_key": ...}]
    remote_endpoints: list[dict[str, Any]] = field(default_factory=list)
    docs_max_file_mb: int = 64  # document collections: a bigger file is named in the report and skipped
    # The model that embeds documents for search: "" = the library's first embedding model (none:
    # keyword search only); a library id or name chooses one, a chat model only when named here.
    docs_embedder: str = ""
    # MCP servers whose tools chats may use: flat entries {"name", "command", "args", "env"} or
    # {"name", "url", "headers"}, plus "confirmed" (a person saw the command); app.runtime.mcp.config
    mcp_servers: list[dict[str, Any]] = field(default_factory=list)
    # Speculative decoding for chats that do not choose their own: "auto" | "off" | "lookup" | "draft:MODEL"
    speculate: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Settings:
        """Raises UnreadableSettings for what cannot be understood as a whole (not an object,
        a bad schema version); a single bad field falls back to its default with a warning."""
        if not isinstance(raw, dict):
            raise UnreadableSettings(f"the file holds {type(raw).__name__}, not a JSON object")
        raw = migrate(dict(raw))
        known = {f.name for f in fields(cls)} - {"extra"}
        defaults = cls()
        values: dict[str, Any] = {}
        for name in known & raw.keys():
            problem = FIELD_CHECKS[name](raw[name])
            if problem is None:
                values[name] = raw[name]
            else:
                shown = SECRET_MASK if name in SECRET_FIELDS else _short(raw[name])
                log.warning("settings: %s %s (found %s); using the default, %s", name, problem, shown,
                            _short(getattr(defaults, name)))
        extra = {k: v for k, v in raw.items() if k not in known and k != "extra"}
        return cls(**values, extra=extra)

    def __repr__(self) -> str:
        """Every field, with API keys masked: a logged Settings must not leak one."""
        shown = self.to_dict()
        for name in SECRET_FIELDS:
            if shown.get(name):
                shown[name] = SECRET_MASK
        shown["remote_endpoints"] = [
            {k: (SECRET_MASK if k == "api_key" and v else v) for k, v in e.items()} if isinstance(e, dict) else e
            for e in self.remote_endpoints
        ]
        shown["mcp_servers"] = [  # env values and headers hold tokens
            {k: ({n: SECRET_MASK for n in v} if k in ("env", "headers") and isinstance(v, dict) else v) for k, v in e.items()}
            if isinstance(e, dict) else e
            for e in self.mcp_servers
        ]
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        return {**extra, **data}


class UnreadableSettings(ValueError):
    """A settings file that cannot be understood as a whole; `load` moves it aside."""


SECRET_FIELDS = ("server_api_key",)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_in(low: int, high: int, *, optional: bool = False) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        if not _is_int(value) or not low <= value <= high:
            auto = " or null (automatic)" if optional else ""
            return f"must be a whole number from {low:,} to {high:,}{auto}"
        return None
    return check


def _text(*, optional: bool = False, choices: tuple[str, ...] = (), nonempty: bool = False) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or (nonempty and not value.strip()) or (choices and value not in choices):
            allowed = f"one of {', '.join(choices)}" if choices else "text"
            return f"must be {allowed}{' or null' if optional else ''}"
        return None
    return check


def _text_list(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        return "must be a list of texts"
    return None


def _text_map(value: Any) -> str | None:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return "must be an object of texts"
    return None


def _endpoints(value: Any) -> str | None:
    if not isinstance(value, list):
        return "must be a list of engines"
    for entry in value:
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("name", "url")):
            return "must be a list of engines, each with a text name and url"
        if entry.get("api_key") is not None and not isinstance(entry["api_key"], str):
            return "must hold text API keys"
    return None


def _mcp_servers(value: Any) -> str | None:
    from app.runtime.mcp.config import entry_problem  # pure data, no SDK

    if not isinstance(value, list):
        return "must be a list of MCP servers"
    names = [e.get("name") for e in value if isinstance(e, dict)]
    for entry in value:
        problem = entry_problem(entry)
        if problem is not None:
            return f"must be a list of MCP servers ({problem})"
    if len(set(names)) != len(names):
        return "must name each MCP server once"
    return None


def _speculate(value: Any) -> str | None:
    ok = isinstance(value, str) and (value in ("auto", "off", "lookup") or (value.startswith("draft:") and len(value) > len("draft:")))
    return None if ok else "must be auto, off, lookup or draft:MODEL"


def _flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


THEMES = ("system", "light", "dark")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_WEB_ORIGIN = re.compile(r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)(:\d{1,5})?$")

# One check per field: None if the value is usable, else what it must be.
FIELD_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "schema_version": _int_in(1, 1_000_000),
    "model_dirs": _text_list,
    "default_model": _text(optional=True),
    "default_backend": _text(nonempty=True),
    "n_threads": _int_in(1, 1024, optional=True),
    "context_length": _int_in(128, 1_048_576, optional=True),
    "model_backends": _text_map,
    "theme": _text(choices=THEMES),
    "first_run_done": _flag,
    "server_host": _text(nonempty=True),
    "server_port": _int_in(1, 65535),
    "server_api_key": _text(optional=True),
    "server_cors_origins": _text_list,
    "server_queue_limit": _int_in(1, 1_000_000),
    "server_max_tokens": _int_in(1, 10_000_000),
    "remote_endpoints": _endpoints,
    "docs_max_file_mb": _int_in(1, 1_000_000),
    "docs_embedder": _text(),
    "mcp_servers": _mcp_servers,
    "speculate": _speculate,
}


def migrate(raw: dict[str, Any]) -> dict[str, Any]:
    version = raw.get("schema_version", 1)
    if not _is_int(version) or version < 1:
        raise UnreadableSettings(f"schema_version {_short(version)} is not a version Hearth ever wrote")
    while version < SCHEMA_VERSION:
        raw = MIGRATIONS[version](raw)
        version += 1
        raw["schema_version"] = version
    return raw


def load(path: Path | None = None) -> Settings:
    path = path or paths().settings_file
    if not path.exists():
        return Settings()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        return _unreadable(path, exc)
    try:
        return Settings.from_dict(json.loads(text))
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        return _unreadable(path, exc)


def _unreadable(path: Path, why: BaseException) -> Settings:
    aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
    log.warning("settings file %s is unreadable (%s); moved to %s, using defaults", path, why, aside)
    try:
        path.replace(aside)
        aside.chmod(SECRET_MODE)  # it may hold keys: keep it private, wherever it goes
    except OSError:
        log.exception("the unreadable settings file %s could not be moved aside", path)
    return Settings()


SECRET_MODE = 0o600


def write_secret_file(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, readable and writable by its owner only.

    The temporary file is created 0600 (and forced to it, should a stale one exist), and the
    rename keeps that mode, so the file is never readable by others, not even for an instant; an
    existing file's looser mode is replaced on this write. A crash mid-write leaves the previous
    file intact.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, SECRET_MODE)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, SECRET_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fd = -1
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        if fd >= 0:
            os.close(fd)
    os.replace(tmp, path)


def save(settings: Settings, path: Path | None = None) -> None:
    """Write atomically, mode 0600 (the file holds API keys)."""
    write_secret_file(path or paths().settings_file, json.dumps(settings.to_dict(), indent=2))


def validate(settings: Settings) -> list[str]:
    """What is wrong with these settings, one sentence a person can act on per problem ([] = fine).

    Types and single-field ranges are also checked on load (`FIELD_CHECKS`); these are the rules a
    person meets while editing (the Settings page), with sentences that point at the field."""
    problems: list[str] = []
    if settings.theme not in THEMES:
        problems.append(f"Theme must be one of {', '.join(THEMES)}, not {settings.theme!r}.")
    if settings.context_length is not None and not 128 <= settings.context_length <= 1_048_576:
        problems.append("Default context length must be between 128 and 1,048,576 tokens, or automatic.")
    if settings.n_threads is not None and not 1 <= settings.n_threads <= 1024:
        problems.append("Threads must be between 1 and 1,024, or automatic.")
    for folder in settings.model_dirs:
        if not Path(folder).is_absolute():
            problems.append(f"Model folder {folder!r} must be a full path.")
    if not settings.server_host.strip():
        problems.append("The server's host must not be empty (127.0.0.1 keeps it on this computer).")
    if not 1 <= settings.server_port <= 65535:
        problems.append(f"The server's port must be between 1 and 65535, not {settings.server_port}.")
    if settings.server_host.strip() not in LOOPBACK_HOSTS and not (settings.server_api_key or "").strip():
        problems.append(
            f"The server listens on {settings.server_host}, which other computers can reach: set an API key, "
            "or use 127.0.0.1 to keep it on this computer."
        )
    for origin in settings.server_cors_origins:  # the server refuses anything else at start (app.server.config.ORIGIN)
        if not _WEB_ORIGIN.match(origin):
            problems.append(f"CORS origin {origin!r} must be http(s)://host or http(s)://host:port, with no path and no wildcard.")
    if settings.server_queue_limit < 1:
        problems.append("The server's queue limit must be at least 1.")
    if settings.server_max_tokens < 1:
        problems.append("The server's maximum tokens per request must be at least 1.")
    names: set[str] = set()
    for endpoint in settings.remote_endpoints:
        name, url = str(endpoint.get("name", "")).strip(), str(endpoint.get("url", "")).strip()
        if not name:
            problems.append("Every remote engine needs a name.")
        elif name in names:
            problems.append(f"Two remote engines are named {name!r}.")
        names.add(name)
        if not url.startswith(("http://", "https://")):
            problems.append(f"Remote engine {name or '(unnamed)'}: the URL must start with http:// or https://.")
    return problems
