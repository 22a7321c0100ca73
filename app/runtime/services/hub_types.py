"""The declared params and results of the model manager's methods (`app.runtime.services.hub`).

Each result's fields are the JSON the Models page, ``hearth models`` and the tests read; the rows
the Hub and the library describe (search hits, variants, GGUF metadata) stay free-form dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from app.runtime.protocol import JobStatus


@dataclass(frozen=True)
class HubSearchParams:
    query: str = ""
    gguf_only: bool = True
    sort: Literal["downloads", "likes", "updated"] = "downloads"
    limit: int = 30


@dataclass(frozen=True)
class HubSearchResult:
    models: list[dict[str, Any]]  # one row per repository: id, downloads, likes, last_modified, gated...


@dataclass(frozen=True)
class HubFilesParams:
    repo_id: str
    revision: str | None = None


@dataclass(frozen=True)
class HubFilesResult:
    repo_id: str
    revision: str | None
    gated: bool
    gguf: Any  # the Hub's GGUF summary of the repository (None when it has none)
    files: list[dict[str, Any]]
    variants: list[dict[str, Any]]  # each with fit, fit_reason, fit_text, recommended, downloaded, partial_bytes
    total_size: int
    fit_source: Literal["model", "size"]  # badges from a downloaded file's shape, or from file sizes alone
    folder: str


@dataclass(frozen=True)
class HubDownloadParams:
    """One named file, or one variant (all its parts); with neither, the recommended variant."""

    repo_id: str
    filename: str | None = None
    variant: str | None = None
    revision: str | None = None


@dataclass(frozen=True)
class HubDownloadResult:
    repo_id: str
    files: list[str]
    paths: list[str]
    bytes: int
    status: JobStatus = JobStatus.DONE  # done even when a pause came after the last byte (while verifying)


@dataclass(frozen=True)
class HubDiscardParams:
    repo_id: str
    filename: str | None = None
    files: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class HubDiscardResult:
    repo_id: str
    files: list[str]
    freed: int


@dataclass(frozen=True)
class HubPartialsResult:
    """Paused downloads on disk: ``{"repo_id", "filename", "partial_bytes"}`` each."""

    partials: list[dict[str, Any]]


@dataclass(frozen=True)
class ModelRefParams:
    """models.delete and models.details: a library id, name or file path."""

    model: str


@dataclass(frozen=True)
class ModelDeleteResult:
    deleted: str
    id: str
    freed: int


@dataclass(frozen=True)
class PathParams:
    """models.add_folder and models.import: a folder or file on this machine."""

    path: str


@dataclass(frozen=True)
class AddFolderResult:
    path: str
    added: bool
    model_dirs: list[str]
    found: int


@dataclass(frozen=True)
class ModelDetailsResult:
    model: dict[str, Any]
    chat_template: str | None
    metadata: dict[str, Any]


@dataclass(frozen=True)
class ImportResult:
    path: str
    id: str
