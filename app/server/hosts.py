"""The Host header check: the server answers only to the names it is bound to (and localhost).

A loopback server without a key trusts whoever can reach 127.0.0.1, which a web page can through
DNS rebinding: its own name (``evil.example``) is made to resolve to 127.0.0.1, and the browser
then sends the page's requests here, with ``Host: evil.example:8080``. Refusing every Host that is
not this server's own name closes that door; a real client (curl, the openai package, a browser
at http://localhost:8080) always sends one of those. Pure ASGI, like `app.server.middleware`.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.server.errors import error_body

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")


def allowed_hosts(bound: str) -> frozenset[str]:
    """The names a server bound to ``bound`` answers to (lower case, without brackets or port).

    Bound to every interface (0.0.0.0, ::), it also answers to this machine's own names; any IP
    address is accepted then too (`host_allowed`), since a rebinding page can only send a name.
    """
    names = {*LOCAL_NAMES, _bare(bound)}
    if _bare(bound) in WILDCARDS:
        for name in (socket.gethostname(), socket.getfqdn()):
            if name:
                names.add(name.lower().rstrip("."))
    return frozenset(n for n in names if n)


def host_allowed(header: str, allowed: frozenset[str], *, any_address: bool) -> bool:
    host = _bare(_without_port(header))
    if not host:
        return False
    if host in allowed:
        return True
    if any_address:
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            return False
    return False


class HostGuard:
    """400 for a request whose Host header is not one of ``allowed`` (see the module's docstring)."""

    def __init__(self, app: ASGIApp, *, bound: str, extra: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = allowed_hosts(bound) | {_bare(h) for h in extra}
        self.any_address = _bare(bound) in WILDCARDS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = ""
        for name, value in scope.get("headers", ()):
            if name == b"host":
                header = value.decode("latin-1")
                break
        if host_allowed(header, self.allowed, any_address=self.any_address):
            await self.app(scope, receive, send)
            return
        shown = ", ".join(sorted(self.allowed))
        payload = json.dumps(error_body(
            f"This server does not answer to the host name {header!r}; it answers to {shown}. "
            "(A web page that gave its own name to this address is refused.)",
            type="invalid_request_error", code="invalid_host", param="Host",
        )).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


def _without_port(header: str) -> str:
    header = header.strip()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _bare(host: str) -> str:
    return host.strip().strip("[]").lower().rstrip(".")
