"""huggingface_hub's exceptions in words a person can act on, as typed RuntimeFailures."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

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


@contextlib.contextmanager
def hub_errors(what: str, repo_id: str = "") -> Iterator[None]:
    """Turn huggingface_hub's exceptions raised inside the block into RuntimeFailures."""
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
        log.warning("network error while %s", what, exc_info=True)
        raise HubUnreachable(what, exc) from None
