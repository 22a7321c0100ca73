"""Document collections as protocol methods: ``docs.add``, ``docs.list``, ``docs.remove``,
``docs.search`` (the work is in `app.runtime.docs`).

``docs.add`` is the indexing job: it adds paths to a collection (making it when new) and brings
the index in step with every source; without paths it only re-indexes (what opening a collection
does). It runs on a thread of its own and is pausable: a pause or a cancel keeps every file
indexed so far, and the next ``docs.add`` of the collection continues. One job per collection at a
time; removing a collection that is being indexed is refused until the job ends.

Vectors come from an embedder the service is given (the tools issue's embedding method will be
one); there is none by default, and never a chat model standing in for one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.runtime.docs import store
from app.runtime.docs.index import Embedder
from app.runtime.docs.indexer import IndexReport, index_collection
from app.runtime.jobs import JobContext, MethodSpec, Mode
from app.runtime.protocol import ErrorKind, Method, NoParams, RuntimeFailure


@dataclass(frozen=True)
class DocsAddParams:
    name: str
    paths: list[str] = field(default_factory=list)  # files and folders; none = re-index the sources
    max_file_mb: int | None = None  # None = the setting docs_max_file_mb


@dataclass(frozen=True)
class DocsListResult:
    collections: list[dict[str, Any]]  # name, files, chunks, chars, vectors, embedder, sources, updated, skipped, index


@dataclass(frozen=True)
class DocsRemoveParams:
    name: str
    paths: list[str] = field(default_factory=list)  # sources to take out; none = the whole collection


@dataclass(frozen=True)
class DocsRemoveResult:
    name: str
    deleted: bool  # the whole collection's index was deleted
    sources_removed: list[str]
    files_removed: int


@dataclass(frozen=True)
class DocsSearchParams:
    name: str
    query: str
    k: int = 5


@dataclass(frozen=True)
class DocsSearchResult:
    collection: str
    query: str
    ranking: str  # "bm25", or "hybrid" when the collection's embedder is here
    hits: list[dict[str, Any]]  # path, name, location, page, line_start, line_end, heading, score, text


class DocsService:
    def __init__(self, *, embedder: Callable[[], Embedder | None] = lambda: None) -> None:
        self._embedder = embedder
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    def methods(self) -> list[MethodSpec[Any, Any]]:
        return [
            MethodSpec(Method.DOCS_ADD.value, DocsAddParams, IndexReport, Mode.BACKGROUND, self.add, pausable=True,
                       doc="pause and cancel keep every file indexed so far; the next docs.add continues"),
            MethodSpec(Method.DOCS_LIST.value, NoParams, DocsListResult, Mode.QUICK, self.list),
            MethodSpec(Method.DOCS_REMOVE.value, DocsRemoveParams, DocsRemoveResult, Mode.QUICK, self.remove),
            MethodSpec(Method.DOCS_SEARCH.value, DocsSearchParams, DocsSearchResult, Mode.BACKGROUND, self.search),
        ]

    def add(self, params: DocsAddParams, ctx: JobContext) -> IndexReport:
        new = [_absolute(p) for p in params.paths]
        missing = [p for p in new if not Path(p).exists()]
        if missing:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"No such file or folder: {', '.join(missing)}")
        limit_mb = params.max_file_mb if params.max_file_mb is not None else _setting_limit_mb()
        if limit_mb < 1:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'max_file_mb' must be at least 1")
        with self._only_job(params.name):
            with store.open_collection(params.name, create=bool(new)) as collection:
                collection.add_sources(new)
                return index_collection(collection, ctx=ctx, max_file_bytes=limit_mb * 2**20, embedder=self._embedder())

    def list(self, params: NoParams, ctx: JobContext) -> DocsListResult:
        rows = []
        for name in store.names():
            with store.open_collection(name) as collection:
                rows.append({**collection.stats(), "indexing": name in self._busy})
        return DocsListResult(rows)

    def remove(self, params: DocsRemoveParams, ctx: JobContext) -> DocsRemoveResult:
        with self._only_job(params.name):
            if not params.paths:
                if not store.remove(params.name):
                    store.open_collection(params.name)  # raises: no such collection
                return DocsRemoveResult(params.name, True, [], 0)
            with store.open_collection(params.name) as collection:
                sources = set(collection.sources())
                wanted = [p if p in sources else _absolute(p) for p in params.paths]
                unknown = [p for p in wanted if p not in sources]
                if unknown:
                    raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"Not a source of {params.name!r}: {', '.join(unknown)} "
                                         f"(its sources: {', '.join(sorted(sources)) or 'none'})")
                collection.remove_sources(wanted)
                files = [f for f in collection.files() if any(f == s or f.startswith(s.rstrip("/") + "/") for s in wanted)]
                collection.remove_files(files)
                return DocsRemoveResult(params.name, False, wanted, len(files))

    def search(self, params: DocsSearchParams, ctx: JobContext) -> DocsSearchResult:
        if not params.query.strip():
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'query' must say something")
        if not 1 <= params.k <= 100:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'k' must be from 1 to 100")
        with store.open_collection(params.name) as collection:
            hits = collection.search(params.query, k=params.k, embedder=self._embedder())
        ranking = hits[0].ranking if hits else "bm25"
        return DocsSearchResult(params.name, params.query, ranking, [h.to_dict() for h in hits])

    @contextmanager
    def _only_job(self, name: str) -> Iterator[None]:
        store.check_name(name)
        with self._lock:
            if name in self._busy:
                raise RuntimeFailure(ErrorKind.BUSY, f"The collection {name!r} is being indexed; wait for it or cancel it first.")
            self._busy.add(name)
        try:
            yield
        finally:
            with self._lock:
                self._busy.discard(name)


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().absolute())


def _setting_limit_mb() -> int:
    from app import settings

    return settings.load().docs_max_file_mb
