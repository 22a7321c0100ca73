"""The server's settings, checked before anything binds: safe by default.

Loopback only unless an API key is set; request bodies and max_tokens bounded; CORS off unless
origins are named. Defaults come from the person's settings (app.settings).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from app.runtime.protocol import ErrorKind, RuntimeFailure
from app.server.limits import Limits

MAX_BODY_BYTES = 4 * 2**20  # a long conversation is well under this; an accident or an attack is not
# An origin as a browser sends it: scheme, host (a name, IPv4 or [IPv6]) and an optional port; no
# path, no trailing slash, no "*" (which would let any web page read the answers).
ORIGIN = re.compile(r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*)(:\d{1,5})?$")
KEY_CHARACTERS = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII without spaces: what an Authorization header carries intact


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    queue_limit: int = 16  # requests waiting or running; past it: 429
    max_tokens: int = 4096  # the most tokens one request may ask for
    max_body_bytes: int = MAX_BODY_BYTES
    model: str | None = None  # loaded at start (None: the one loaded, or the default on first use)
    limits: Limits = field(default_factory=Limits)  # the work one request may ask for (app.server.limits)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.limits, Limits):  # from settings or asdict(): a plain dict
            object.__setattr__(self, "limits", Limits.from_dict(self.limits))

    @classmethod
    def from_settings(cls, overrides: dict[str, Any] | None = None) -> ServerConfig:
        """The person's saved server settings with this start's own (non-None) values on top."""
        from app import settings as settings_module

        saved = settings_module.load()
        config = cls(
            host=saved.server_host,
            port=saved.server_port,
            api_key=saved.server_api_key or None,
            cors_origins=tuple(saved.server_cors_origins),
            queue_limit=saved.server_queue_limit,
            max_tokens=saved.server_max_tokens,
        )
        return config.with_overrides(overrides or {})

    def with_overrides(self, overrides: dict[str, Any]) -> ServerConfig:
        known = {"host", "port", "api_key", "cors_origins", "queue_limit", "max_tokens", "max_body_bytes", "model", "limits"}
        unknown = set(overrides) - known
        if unknown:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"unknown server option(s): {', '.join(sorted(unknown))}")
        values = {k: v for k, v in overrides.items() if v is not None}
        if "cors_origins" in values:
            origins = values["cors_origins"]
            values["cors_origins"] = tuple([origins] if isinstance(origins, str) else origins)
        if values.get("api_key") == "":
            values["api_key"] = None
        if "limits" in values:
            values["limits"] = Limits.from_dict({**self.limits.to_dict(), **(values["limits"] if isinstance(values["limits"], dict) else {})}
                                                if isinstance(values["limits"], dict) else values["limits"])
        config = replace(self, **values)
        config.validate()
        return config

    def validate(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "The server needs an address to listen on, such as 127.0.0.1.")
        for name in ("port", "queue_limit", "max_tokens", "max_body_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'{name}' must be a whole number, not {value!r}")
        if not 0 <= self.port <= 65535:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"Port {self.port} is not a TCP port (0-65535; 0 picks a free one).")
        if self.queue_limit < 1 or self.max_tokens < 1 or self.max_body_bytes < 1024:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "queue_limit and max_tokens must be at least 1, max_body_bytes at least 1024.")
        if self.api_key is not None and (not isinstance(self.api_key, str) or len(self.api_key) < 8):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "An API key must be at least 8 characters.")
        if self.api_key is not None and not self.api_key.strip():
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "An API key of only spaces is no key: set a real one (letters, digits, punctuation), or none.")
        if self.api_key is not None and not KEY_CHARACTERS.match(self.api_key):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "An API key may hold only letters, digits and punctuation (no spaces, no other characters): "
                                 "a client sends it in a header, which carries nothing else intact.")
        for origin in self.cors_origins:
            if not isinstance(origin, str) or not ORIGIN.match(origin):
                raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{origin!r} is not a web origin: a CORS origin is http(s)://host or http(s)://host:port, "
                                     "with no path and no wildcard (e.g. http://localhost:3000).")
        if not is_loopback(self.host) and not self.api_key:
            raise RuntimeFailure(
                ErrorKind.INVALID_PARAMS,
                f"Refusing to listen on {self.host} without an API key: other machines could use your model. "
                "Set an API key (--api-key, or the Server page), or listen on 127.0.0.1.",
            )

    def public(self) -> dict[str, Any]:
        """What the UI may show: everything but the key itself."""
        data = asdict(self)
        data.pop("extra")
        data["cors_origins"] = list(self.cors_origins)
        data["limits"] = self.limits.to_dict()
        data["api_key"] = bool(self.api_key)
        return data
