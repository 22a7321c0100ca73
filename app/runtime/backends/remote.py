"""A remote OpenAI-compatible engine (vLLM, a llama.cpp server, Ollama, another Hearth) as a model source.

For people who outgrow one machine: an endpoint (name, URL, key) from the settings adds its
models to the library as ``remote:<endpoint>/<model>``; chatting with one streams from the remote
through the same events as a local model (tokens, stop, sampling, usage). Nothing is loaded here,
so choosing a remote model never unloads the local one.

Every way the network can fail becomes a RuntimeFailure(REMOTE_FAILED) that names the endpoint
and says what to check: refused connection, timeout, a wrong key, a non-JSON answer.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from app.runtime.backends.base import Completion, IsCancelled, TokenSink
from app.runtime.protocol import ErrorKind, RuntimeFailure, Sampling

log = logging.getLogger(__name__)

PREFIX = "remote:"
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 120.0  # between two streamed chunks: a remote may queue us behind others
LIST_TIMEOUT = 3.0  # the library listing must stay quick even when a remote is down


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str  # the base URL, ending in /v1
    api_key: str | None = field(default=None, repr=False)  # never in a log line or a traceback

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Endpoint:
        name, url = raw.get("name"), raw.get("url")
        if not isinstance(name, str) or not name.strip() or "/" in name:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"A remote endpoint needs a name without '/': {name!r} (at {url!r})")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"Remote endpoint {name!r} needs an http:// or https:// URL, not {url!r}.")
        base = url.rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        key = raw.get("api_key")
        return cls(name.strip(), base, key if isinstance(key, str) and key else None)


def configured() -> list[Endpoint]:
    """The endpoints in the person's settings; a malformed one is skipped with a log line."""
    from app import settings as settings_module

    found = []
    for raw in settings_module.load().remote_endpoints:
        try:
            found.append(Endpoint.from_dict(raw))
        except RuntimeFailure as exc:
            log.warning("remote endpoint skipped: %s", exc.message)
    return found


def is_remote(model_ref: str | None) -> bool:
    return isinstance(model_ref, str) and model_ref.startswith(PREFIX)


def model_id(endpoint: Endpoint, model: str) -> str:
    return f"{PREFIX}{endpoint.name}/{model}"


def resolve(model_ref: str, endpoints: Sequence[Endpoint] | None = None) -> RemoteBackend:
    """``remote:<endpoint>/<model>`` -> a backend for it."""
    name, _, model = model_ref[len(PREFIX) :].partition("/")
    for endpoint in configured() if endpoints is None else endpoints:
        if endpoint.name == name:
            if not model:
                raise RuntimeFailure(ErrorKind.MODEL_NOT_FOUND, f"{model_ref!r} names no model: use remote:{name}/<model>.")
            return RemoteBackend(endpoint, model)
    raise RuntimeFailure(ErrorKind.MODEL_NOT_FOUND, f"There is no remote endpoint called {name!r}. Add it under Settings → Remote engines.")


def library_rows(endpoints: Sequence[Endpoint] | None = None) -> list[dict[str, Any]]:
    """Library rows (as `ModelInfo.to_dict` plus ``fit``) for every remote model; an endpoint that
    cannot be listed gives one row saying why, so the person sees it is down rather than nothing."""
    rows = []
    for endpoint in configured() if endpoints is None else endpoints:
        try:
            names = list_models(endpoint)
        except RuntimeFailure as exc:
            rows.append(_row(endpoint, "", fits=False, summary=exc.message))
            continue
        rows.extend(_row(endpoint, name, fits=True, summary=f"runs on {endpoint.url}") for name in names)
    return rows


def _row(endpoint: Endpoint, model: str, *, fits: bool, summary: str) -> dict[str, Any]:
    return {
        "id": model_id(endpoint, model), "name": f"{model or '(unreachable)'} @ {endpoint.name}", "path": endpoint.url,
        "format": "remote", "source": "remote", "file_size": 0, "architecture": "", "parameters": 0, "quantization": "",
        "context_length": 0, "n_layers": 0, "n_embd": 0, "n_head": 0, "n_head_kv": 0, "head_dim": 0, "vocab_size": 0,
        "has_chat_template": True, "fit": {"fits": fits, "summary": summary, "placement": "remote"},
    }


def list_models(endpoint: Endpoint) -> list[str]:
    with _client(endpoint, read=LIST_TIMEOUT) as http:
        response = _call(endpoint, lambda: http.get(f"{endpoint.url}/models"))
        data = _json(endpoint, response)
    try:
        return [str(item["id"]) for item in data["data"]]
    except (KeyError, TypeError):
        raise RuntimeFailure(ErrorKind.REMOTE_FAILED, f"{endpoint.name} ({endpoint.url}) answered /models without a model list; is it an OpenAI-compatible server?") from None


class RemoteBackend:
    name = "remote"

    def __init__(self, endpoint: Endpoint, model: str) -> None:
        self.endpoint = endpoint
        self.model = model

    def chat(
        self,
        messages: Sequence[dict[str, str]],
        sampling: Sampling,
        *,
        on_token: TokenSink,
        is_cancelled: IsCancelled,
        context_policy: str = "rolling_window",
        chat_template: str | None = None,
    ) -> Completion:
        """Stream a chat from the remote; the context policy and template are the remote's business."""
        if chat_template is not None:
            raise RuntimeFailure(ErrorKind.UNSUPPORTED, "A remote model uses its server's chat template; a template override cannot be sent.")
        return self._stream("chat/completions", {"messages": list(messages)}, sampling, on_token, is_cancelled, chat=True)

    def complete(self, prompt: str, sampling: Sampling, *, on_token: TokenSink, is_cancelled: IsCancelled) -> Completion:
        return self._stream("completions", {"prompt": prompt}, sampling, on_token, is_cancelled, chat=False)

    def close(self) -> None:
        """Nothing is held between requests."""

    def _stream(self, path: str, body: dict[str, Any], sampling: Sampling, on_token: TokenSink, is_cancelled: IsCancelled, *, chat: bool) -> Completion:
        payload: dict[str, Any] = {
            **body, "model": self.model, "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": sampling.max_tokens, "temperature": sampling.temperature, "top_p": sampling.top_p,
        }
        if sampling.seed is not None:
            payload["seed"] = sampling.seed
        if sampling.stop:
            payload["stop"] = list(sampling.stop)
        started = time.perf_counter()
        first_at: float | None = None
        text: list[str] = []
        finish, usage, pieces = "length", None, 0
        with _client(self.endpoint, read=READ_TIMEOUT) as http:
            with _call(self.endpoint, lambda: http.stream("POST", f"{self.endpoint.url}/{path}", json=payload)) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for(self.endpoint, response)
                for chunk in _events(self.endpoint, response):
                    if "error" in chunk:
                        raise RuntimeFailure(ErrorKind.REMOTE_FAILED, f"{self.endpoint.name} stopped with an error: {_message(chunk)}")
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or ():
                        piece = (choice.get("delta") or choice.get("message") or {}).get("content") if chat else choice.get("text")
                        if piece:
                            first_at = first_at or time.perf_counter()
                            text.append(piece)
                            pieces += 1
                            on_token(piece)
                        if choice.get("finish_reason"):
                            finish = "length" if choice["finish_reason"] == "length" else "stop"
                    if is_cancelled():
                        finish = "cancelled"
                        break  # leaving the block closes the connection: the remote stops too
        ended = time.perf_counter()
        first_at = first_at or ended
        return Completion(
            text="".join(text),
            finish_reason=finish,
            prompt_tokens=int((usage or {}).get("prompt_tokens", 0)),
            completion_tokens=int((usage or {}).get("completion_tokens", pieces)),
            cached_tokens=0,
            prompt_seconds=first_at - started,
            decode_seconds=ended - first_at,
        )


def _client(endpoint: Endpoint, *, read: float) -> httpx.Client:
    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    return httpx.Client(headers=headers, timeout=httpx.Timeout(read, connect=CONNECT_TIMEOUT), trust_env=False)


def _call(endpoint: Endpoint, do: Any) -> Any:
    """Run one request, turning network failures into words; also wraps `http.stream` (a context manager)."""
    try:
        target = do()
    except httpx.HTTPError as exc:
        raise _network_failure(endpoint, exc) from None
    if isinstance(target, httpx.Response):
        if target.status_code >= 400:
            _raise_for(endpoint, target)
        return target
    return _Guarded(endpoint, target)


class _Guarded:
    """`http.stream(...)` with the same translation of network errors on enter and while reading."""

    def __init__(self, endpoint: Endpoint, manager: Any) -> None:
        self._endpoint, self._manager = endpoint, manager

    def __enter__(self) -> httpx.Response:
        try:
            return self._manager.__enter__()
        except httpx.HTTPError as exc:
            raise _network_failure(self._endpoint, exc) from None

    def __exit__(self, *exc_info: Any) -> Any:
        kind = exc_info[1]
        try:
            result = self._manager.__exit__(*exc_info)
        except httpx.HTTPError as exc:
            raise _network_failure(self._endpoint, exc) from None
        if isinstance(kind, httpx.HTTPError):
            raise _network_failure(self._endpoint, kind) from None
        return result


def _network_failure(endpoint: Endpoint, exc: httpx.HTTPError) -> RuntimeFailure:
    where = f"{endpoint.name} ({endpoint.url})"
    if isinstance(exc, httpx.ConnectError):
        return RuntimeFailure(ErrorKind.REMOTE_FAILED, f"{where} refused the connection or cannot be reached. Is the server running, and is the URL right?")
    if isinstance(exc, httpx.TimeoutException):
        return RuntimeFailure(ErrorKind.REMOTE_FAILED, f"{where} did not answer in time ({type(exc).__name__}). It may be overloaded or unreachable.")
    return RuntimeFailure(ErrorKind.REMOTE_FAILED, f"{where} failed: {exc}")


def _raise_for(endpoint: Endpoint, response: httpx.Response) -> None:
    where = f"{endpoint.name} ({endpoint.url})"
    try:
        said = _message(response.json())
    except ValueError:
        said = response.text[:200]
    if response.status_code == 401:
        raise RuntimeFailure(ErrorKind.REMOTE_FAILED, f"{where} refused the API key ({said}). Check the key in Settings → Remote engines.")
    if response.status_code == 404:
        raise RuntimeFailure(ErrorKind.MODEL_NOT_FOUND, f"{where} does not know that model or path: {said}")
    raise RuntimeFailure(ErrorKind.REMOTE_FAILED, f"{where} answered {response.status_code}: {said}")


def _message(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", body["error"]))
    return str(body)[:200]


def _json(endpoint: Endpoint, response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise RuntimeFailure(ErrorKind.REMOTE_FAILED, f"{endpoint.name} ({endpoint.url}) did not answer with JSON; is it an OpenAI-compatible server?") from None


def _events(endpoint: Endpoint, response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream, until [DONE]."""
    if "text/event-stream" not in response.headers.get("content-type", ""):
        yield _json(endpoint, response.read() and response)  # a server that ignored stream=true
        return
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            raise RuntimeFailure(ErrorKind.REMOTE_FAILED, f"{endpoint.name} sent a stream line that is not JSON: {data[:120]!r}") from None
        if isinstance(chunk, dict):
            yield chunk
