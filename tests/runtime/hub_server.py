"""A small Hugging Face Hub-compatible HTTP server for the hub tests (not a test module).

It serves, from real files, the endpoints huggingface_hub 2.4 calls:
``GET /api/models`` (list_models), ``GET /api/models/{repo}[/revision/{rev}]`` (model_info,
``blobs=true`` adds sizes and LFS sha256), ``POST /api/models/{repo}/paths-info/{rev}``
(get_paths_info) and ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` (get_hf_file_metadata /
http_get: ``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``/``X-Linked-Size`` for LFS files,
``Range`` answered with 206 and ``Content-Range``). Every request is recorded; failure knobs
drop the connection after N bytes, stall, or corrupt a byte, each for one file.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class HubFile:
    path: str
    source: Path | bytes
    lfs: bool = True
    size: int = 0
    sha256: str = ""
    blob_id: str = ""
    listed_size: int | None = None  # a listing-only file: its size on the Hub, bytes not served

    def __post_init__(self) -> None:
        data_size = len(self.source) if isinstance(self.source, bytes) else self.source.stat().st_size
        self.size = data_size
        sha, sha1 = hashlib.sha256(), hashlib.sha1(f"blob {data_size}\0".encode())
        for chunk in self._chunks(0):
            sha.update(chunk)
            sha1.update(chunk)
        self.sha256, self.blob_id = sha.hexdigest(), sha1.hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_id

    def _chunks(self, start: int, chunk: int = 1 << 20) -> Any:
        if isinstance(self.source, bytes):
            for i in range(start, len(self.source), chunk):
                yield self.source[i : i + chunk]
            return
        with self.source.open("rb") as f:
            f.seek(start)
            while block := f.read(chunk):
                yield block


@dataclass
class HubRepo:
    repo_id: str
    files: list[HubFile]
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    downloads: int = 0
    likes: int = 0
    last_modified: str = "2026-01-01T00:00:00.000Z"
    tags: list[str] = field(default_factory=list)
    pipeline_tag: str | None = "text-generation"
    library_name: str | None = None
    gated: str | bool = False
    token: str | None = None  # the token a gated repo wants

    def file(self, path: str) -> HubFile | None:
        return next((f for f in self.files if f.path == path), None)

    def summary(self) -> dict[str, Any]:
        return {"_id": self.repo_id, "id": self.repo_id, "modelId": self.repo_id, "author": self.repo_id.split("/")[0],
                "downloads": self.downloads, "likes": self.likes, "lastModified": self.last_modified,
                "tags": self.tags, "pipeline_tag": self.pipeline_tag, "library_name": self.library_name,
                "private": False, "gated": self.gated, "createdAt": "2025-01-01T00:00:00.000Z"}


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case
    body: bytes = b""
    sent: int = 0  # body bytes sent in answer


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.requests: list[Recorded] = []
        self.sent: dict[str, int] = {}  # body bytes sent per file path
        self.drop_after: dict[str, int] = {}  # path -> close the connection after this many body bytes, once
        self.stall: dict[str, tuple[int, float]] = {}  # path -> (after bytes, seconds), once
        self.corrupt: set[str] = set()  # paths whose byte 1000 is flipped on every GET
        self.fail_head = 0  # close the connection without answering this many HEAD /resolve requests
        self.release = threading.Event()  # ends any stall at shutdown
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add(self, repo: HubRepo) -> HubRepo:
        self.repos[repo.repo_id] = repo
        return repo

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def calls(self, method: str, contains: str = "") -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.method == method and contains in r.path]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"
    _rec: Recorded

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output quiet
        return

    # ---- dispatch ------------------------------------------------------------------------------

    def _record(self) -> tuple[str, dict[str, list[str]], bytes]:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self._rec = Recorded(self.command, unquote(parts.path), parse_qs(parts.query), {k.lower(): v for k, v in self.headers.items()}, body)
        with self.fake.lock:
            self.fake.requests.append(self._rec)
        return unquote(parts.path), parse_qs(parts.query), body

    def do_GET(self) -> None:
        self._route(*self._record())

    def do_HEAD(self) -> None:
        self._route(*self._record())

    def do_POST(self) -> None:
        self._route(*self._record())

    def _route(self, path: str, query: dict[str, list[str]], body: bytes) -> None:
        if path == "/api/models" and self.command == "GET":
            return self._list_models(query)
        if path.startswith("/api/models/"):
            rest = path[len("/api/models/") :].split("/")
            repo = self.fake.repos.get("/".join(rest[:2]))
            if repo is None:
                return self._error(404, "RepoNotFound", "Repository not found")
            if len(rest) == 2 or rest[2] == "revision":
                return self._model_info(repo, query)
            if rest[2] == "paths-info" and self.command == "POST":
                return self._paths_info(repo, parse_qs(body.decode()))
        if "/resolve/" in path:
            repo_path, _, tail = path.lstrip("/").partition("/resolve/")
            repo = self.fake.repos.get(repo_path)
            if repo is None:
                return self._error(404, "RepoNotFound", "Repository not found")
            _revision, _, filename = tail.partition("/")
            return self._resolve(repo, filename)
        self._error(404, None, f"no route for {self.command} {path}")

    # ---- endpoints -----------------------------------------------------------------------------

    def _list_models(self, query: dict[str, list[str]]) -> None:
        repos = list(self.fake.repos.values())
        if search := query.get("search", [""])[0].lower():
            repos = [r for r in repos if search in r.repo_id.lower()]
        for f in query.get("filter", []):
            repos = [r for r in repos if f in r.tags or f == r.library_name]
        if tag := query.get("pipeline_tag", [""])[0]:
            repos = [r for r in repos if r.pipeline_tag == tag]
        sort = query.get("sort", [""])[0]
        key = {"downloads": lambda r: r.downloads, "likes": lambda r: r.likes, "lastModified": lambda r: r.last_modified}.get(sort)
        if key is not None:
            repos.sort(key=key, reverse=True)  # the Hub sorts descending
        limit = int(query.get("limit", ["1000"])[0])
        self._json([r.summary() for r in repos[:limit]])

    def _model_info(self, repo: HubRepo, query: dict[str, list[str]]) -> None:
        if not self._authorized(repo):
            return
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for f in repo.files:
            s: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                size = f.listed_size or f.size
                s.update(size=size, blobId=f.blob_id)
                if f.lfs:
                    s["lfs"] = {"sha256": f.sha256, "size": size, "pointerSize": 134}
            siblings.append(s)
        self._json({**repo.summary(), "sha": repo.sha, "siblings": siblings, "gguf": None})

    def _paths_info(self, repo: HubRepo, form: dict[str, list[str]]) -> None:
        out = []
        for p in form.get("paths", []):
            f = repo.file(p)
            if f is not None:
                entry: dict[str, Any] = {"type": "file", "path": f.path, "size": f.size, "oid": f.blob_id}
                if f.lfs:
                    entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
                out.append(entry)
        self._json(out)

    def _resolve(self, repo: HubRepo, filename: str) -> None:
        if not self._authorized(repo):
            return
        f = repo.file(filename)
        if f is None or f.listed_size is not None:
            return self._error(404, "EntryNotFound", "Entry not found")
        with self.fake.lock:
            fail = self.command == "HEAD" and self.fake.fail_head > 0
            self.fake.fail_head -= fail
        if fail:
            self.close_connection = True
            return
        start, status = 0, 200
        if rng := self.headers.get("Range"):
            assert rng.startswith("bytes=") and rng.endswith("-"), f"unexpected Range {rng!r}"
            start = int(rng[len("bytes=") : -1])
            if start >= f.size:
                return self._error(416, None, "Range Not Satisfiable")
            status = 206
        self.send_response(status)
        self.send_header("X-Repo-Commit", repo.sha)
        self.send_header("ETag", f'"{f.etag}"')
        if f.lfs:
            self.send_header("X-Linked-Etag", f'"{f.sha256}"')
            self.send_header("X-Linked-Size", str(f.size))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(f.size - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{f.size - 1}/{f.size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        self._send_body(f, start)

    def _send_body(self, f: HubFile, start: int) -> None:
        fake, sent = self.fake, 0
        with fake.lock:
            drop = fake.drop_after.pop(f.path, None)
            stall = fake.stall.pop(f.path, None)
        position = start
        try:
            for chunk in f._chunks(start, 64 * 1024):
                if f.path in fake.corrupt and position <= 1000 < position + len(chunk):
                    i = 1000 - position
                    chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
                if drop is not None and sent + len(chunk) > drop:
                    chunk = chunk[: drop - sent]
                if stall is not None and sent + len(chunk) > stall[0]:
                    chunk = chunk[: stall[0] - sent]
                self.wfile.write(chunk)
                sent += len(chunk)
                self._rec.sent = sent
                position += len(chunk)
                if drop is not None and sent >= drop:
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if stall is not None and sent >= stall[0]:
                    self.wfile.flush()
                    fake.release.wait(stall[1])  # the client's read timeout fires meanwhile
                    self.close_connection = True
                    return
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            with fake.lock:
                fake.sent[f.path] = fake.sent.get(f.path, 0) + sent

    # ---- helpers -------------------------------------------------------------------------------

    def _authorized(self, repo: HubRepo) -> bool:
        if not repo.gated or self.headers.get("Authorization") == f"Bearer {repo.token}":
            return True
        self._error(401, "GatedRepo", f"Access to model {repo.repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in.")
        return False

    def _json(self, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, code: str | None, message: str) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def point_huggingface_hub_at(server: Any, home: Path, monkeypatch: Any) -> None:
    """Environment and huggingface_hub constants for a test against ``server``, with a private
    HF_HOME; through ``monkeypatch``, so a worker started afterwards inherits the variables."""
    from huggingface_hub import constants

    for name, value in {"HF_ENDPOINT": server.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home),
                        "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_DISABLE_TELEMETRY": "1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub reads these into `constants` at import; Hearth passes endpoint= explicitly anyway.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
