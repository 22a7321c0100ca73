"""Typed user settings with a schema version and migrations.

The file is JSON in the user config folder. Unknown keys from a newer Hearth are kept, so that a
downgrade never throws the user's choices away; a file that cannot be read is moved aside (never
deleted) and defaults are used, with the reason logged.
"""

from __future__ import annotations

import json
import logging
import os
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
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Settings:
        raw = migrate(dict(raw))
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known and k != "extra"}
        extra = {k: v for k, v in raw.items() if k not in known}
        return cls(**values, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        return {**extra, **data}


def migrate(raw: dict[str, Any]) -> dict[str, Any]:
    version = int(raw.get("schema_version", 1))
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
        return Settings.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
        log.warning("settings file %s is unreadable (%s); moved to %s, using defaults", path, exc, aside)
        path.replace(aside)
        return Settings()


def save(settings: Settings, path: Path | None = None) -> None:
    """Write atomically: a crash mid-write leaves the previous file intact."""
    path = path or paths().settings_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(settings.to_dict(), fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


THEMES = ("system", "light", "dark")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def validate(settings: Settings) -> list[str]:
    """What is wrong with these settings, one sentence a person can act on per problem ([] = fine).

    Checked where a person edits them (the Settings page) rather than on load, so that a file
    edited by hand still opens and the page can point at the field to fix."""
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
    for origin in settings.server_cors_origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            problems.append(f"CORS origin {origin!r} must start with http:// or https:// (or be *).")
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
