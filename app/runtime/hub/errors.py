"""huggingface_hub's exceptions in words a person can act on, as typed RuntimeFailures."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Iterator
from typing import Any

import httpx2
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from app.runtime.protocol import ErrorKind, RuntimeFailure

log = logging.getLogger(__name__)

# protocol.ErrorKind has no kind for "the network failed" or "the disk is full" yet; one place to
# change when it does.
NETWORK_KIND = ErrorKind.INTERNAL
NO_SPACE_KIND = ErrorKind.INVALID_PARAMS

# What huggingface_hub raises when a transfer breaks: dropped connections, timeouts, refused connects.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (httpx2.TransportError, ConnectionError, TimeoutError)


class HubUnreachable(RuntimeFailure):
    def __init__(self, what: str, exc: BaseException) -> None:
        super().__init__(
            NETWORK_KIND,
            f"Could not reach the Hugging Face Hub while {what}: {exc}. Check the network connection and try again.",
            detail=repr(exc),
        )


class HubConnectFailed(ConnectionError):
    """No connection to the Hub at all (refused, no route, name not found, connect timeout)."""


# Inside `hub_errors` (Hearth's own Hub calls) a failed connect is said at once instead of being
# retried by huggingface_hub for about 23 s (5 retries with backoff, each logging a warning): the
# CLI and the Models page answer "cannot reach the Hub" in a second, and a download's own retry
# loop (app.runtime.hub.transfer) stays the one place that retries. Outside the block (a library
# that calls huggingface_hub itself) the client behaves as huggingface_hub's own.
_FAIL_FAST: contextvars.ContextVar[bool] = contextvars.ContextVar("hearth_hub_fail_fast", default=False)
_installed = threading.Lock()
_client_ready = False


class _FailFastClient(httpx2.Client):
    def send(self, request: httpx2.Request, **kwargs: Any) -> httpx2.Response:
        try:
            return super().send(request, **kwargs)
        except (httpx2.ConnectError, httpx2.ConnectTimeout) as exc:
            if not _FAIL_FAST.get():
                raise
            raise HubConnectFailed(str(exc)) from exc  # not one of the errors huggingface_hub retries


def _use_fail_fast_client() -> None:
    """huggingface_hub's shared client with its own hooks and settings, as a `_FailFastClient`
    (through its public ``set_client_factory``, once per process)."""
    global _client_ready
    with _installed:
        if _client_ready:
            return
        import huggingface_hub

        template = huggingface_hub.get_session()
        hooks, redirects, timeout = template.event_hooks, template.follow_redirects, template.timeout
        huggingface_hub.set_client_factory(lambda: _FailFastClient(event_hooks=hooks, follow_redirects=redirects, timeout=timeout))
        _client_ready = True


@contextlib.contextmanager
def hub_errors(what: str, repo_id: str = "") -> Iterator[None]:
    """Turn huggingface_hub's exceptions raised inside the block into RuntimeFailures (and say
    at once when the Hub cannot be reached at all)."""
    _use_fail_fast_client()
    fail_fast = _FAIL_FAST.set(True)
    try:
        yield
    except RuntimeFailure:
        raise
    except GatedRepoError as exc:  # before RepositoryNotFoundError: it is a subclass
        raise RuntimeFailure(
            ErrorKind.MODEL_NOT_FOUND,
            f"{repo_id} is a gated repository: accept its terms on huggingface.co/{repo_id}, then log in with "
            "`hf auth login` (Hearth uses huggingface_hub's saved token).",
            detail=str(exc),
        ) from None
    except RepositoryNotFoundError as exc:
        raise RuntimeFailure(
            ErrorKind.MODEL_NOT_FOUND,
            f"No repository {repo_id!r} on the Hugging Face Hub (or it is private and you are not logged in).",
            detail=str(exc),
        ) from None
    except RevisionNotFoundError as exc:
        raise RuntimeFailure(ErrorKind.MODEL_NOT_FOUND, f"{repo_id} has no such revision.", detail=str(exc)) from None
    except EntryNotFoundError as exc:
        raise RuntimeFailure(ErrorKind.MODEL_NOT_FOUND, f"{repo_id} has no such file.", detail=str(exc)) from None
    except HfHubHTTPError as exc:
        log.warning("hub error while %s", what, exc_info=True)
        raise RuntimeFailure(NETWORK_KIND, f"The Hugging Face Hub refused {what}: {exc}", detail=repr(exc)) from None
    except TRANSIENT_ERRORS as exc:
        log.warning("network error while %s: %r", what, exc, exc_info=not isinstance(exc, HubConnectFailed))
        raise HubUnreachable(what, exc) from None
    finally:
        _FAIL_FAST.reset(fail_fast)
