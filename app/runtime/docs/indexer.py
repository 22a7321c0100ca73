"""The indexing job: walk a collection's sources, (re)index what changed, report what was skipped.

``index_collection(collection, ctx=..., max_file_bytes=...)`` is a plain function with a
`JobContext` (the Spyder/Orange habit), run by the ``docs.add`` method and by the tests alike:

* incremental: a file whose size and modification time match the index is not opened; one whose
  time changed but whose SHA-256 did not is only re-dated; the rest is extracted again, and files
  that are gone from the sources leave the index;
* each file is committed whole or not at all, and ``ctx.check()`` runs between files: a cancel
  keeps every file indexed so far (they are consistent and useful) and ends ``cancelled``; a pause
  does the same and ends ``paused``, and the next run continues where it stopped, since what it
  finished is now unchanged;
* bad input never stops the run: an encrypted, corrupt or scanned PDF, a binary file, an unreadable
  folder, a file over the size limit, an unknown type -- each is named with its reason in the
  report (and kept in the index for `docs ls`), and the rest is indexed;
* with an `Embedder`, the chunks without a vector get one afterwards (batch by batch, also
  stoppable); without one, nothing is embedded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat as stat_mode
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.runtime.docs.chunk import chunk_blocks
from app.runtime.docs.extract import Unreadable, extract, kind_of, unknown_type
from app.runtime.docs.index import Collection, Embedder
from app.runtime.jobs import JobContext, JobStopped
from app.runtime.protocol import JobStatus

log = logging.getLogger(__name__)

# Folders no one means to index: version control, caches, environments, build output.
IGNORED_DIRS = frozenset({"__pycache__", "node_modules", "site-packages", "venv", "dist", "build", "target"})
EMBED_BATCH = 64


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass(frozen=True)
class IndexReport:
    """What one indexing run did (the ``docs.add`` result)."""

    collection: str
    files: int  # files in the index after the run
    chunks: int
    indexed: list[str]  # (re)indexed by this run
    unchanged: int
    removed: list[str]  # gone from the sources, so gone from the index
    skipped: list[Skipped]
    bytes_read: int  # of the files this run extracted
    chars: int  # of text they gave
    seconds: float
    vectors: int = 0  # chunks embedded by this run
    embedder: str | None = None
    status: JobStatus = JobStatus.DONE


@dataclass
class _Walk:
    files: list[Path] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # folders whose indexed files are kept as they are
    missing: list[str] = field(default_factory=list)


def walk(sources: Sequence[str]) -> _Walk:
    """Every file under the sources (hidden entries and `IGNORED_DIRS` left out), and the folders
    that could not be read."""
    found = _Walk()
    seen: set[Path] = set()
    for source in sources:
        root = Path(source)
        if root.is_file():
            if root not in seen:
                seen.add(root)
                found.files.append(root)
            continue
        if not root.is_dir():
            found.missing.append(source)
            found.skipped.append(Skipped(source, "not found: it was moved or deleted (its files leave the index)"))
            continue

        def unreadable(exc: OSError) -> None:
            where = exc.filename or source
            found.unreadable.append(str(where))
            found.skipped.append(Skipped(str(where), f"folder cannot be read ({exc.strerror or exc}); what was indexed from it is kept"))

        for folder, dirs, names in os.walk(root, onerror=unreadable):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in IGNORED_DIRS)
            for name in sorted(names):
                path = Path(folder) / name
                if name.startswith(".") or path in seen or path.is_symlink() and not path.is_file():
                    continue
                seen.add(path)
                found.files.append(path)
    return found


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def index_collection(
    collection: Collection,
    *,
    ctx: JobContext,
    max_file_bytes: int,
    embedder: Embedder | None = None,
) -> IndexReport:
    """Bring the collection's index in step with its sources (see the module docstring)."""
    started = time.monotonic()
    ctx.progress("scan", message=f"Looking for files in {len(collection.sources())} source(s)")
    found = walk(collection.sources())
    known = collection.files()
    skipped = list(found.skipped)
    indexed: list[str] = []
    unchanged = bytes_read = chars = 0

    present = {str(p) for p in found.files}
    gone = [p for p in known if p not in present and not any(_under(p, folder) for folder in found.unreadable)]
    collection.remove_files(gone)

    def stop_info() -> dict[str, Any]:
        return {"collection": collection.name, "indexed": indexed, "skipped": [asdict(s) for s in skipped],
                "remaining": total - done}

    total, done = len(found.files), 0
    for path in found.files:
        status = ctx.stop_requested
        if status is not None:
            _keep_skipped(collection, skipped, complete=False)
            raise JobStopped(status, _stopped_message(status, collection.name, len(indexed), total - done), **stop_info())
        ctx.progress("index", done=done, total=total, unit="files", message=path.name)
        done += 1
        key = str(path)
        try:
            stat = path.stat()
        except OSError as exc:
            skipped.append(Skipped(key, f"cannot be read ({exc.strerror or exc})"))
            continue
        if not stat_mode.S_ISREG(stat.st_mode):  # a pipe or a device would block the read or never end
            skipped.append(Skipped(key, "not a regular file (a pipe, socket or device)"))
            continue
        row = known.get(key)
        if row is not None and row.size == stat.st_size and row.mtime_ns == stat.st_mtime_ns:
            unchanged += 1
            continue
        reason = _refuse(path, stat.st_size, max_file_bytes)
        if reason is not None:
            skipped.append(Skipped(key, reason))
            if row is not None:
                collection.remove_files([key])  # what the index held is no longer the file
            continue
        try:
            digest = sha256_of(path)
            if row is not None and row.sha256 == digest:
                collection.touch(key, stat.st_mtime_ns)
                unchanged += 1
                continue
            kind = kind_of(path)
            if kind is None:
                raise unknown_type(path)
            chunks = chunk_blocks(extract(path, kind))
            if not chunks:
                raise Unreadable("no text in it (an empty file)")
        except Unreadable as exc:
            skipped.append(Skipped(key, exc.reason))
            if row is not None:
                collection.remove_files([key])
            continue
        except OSError as exc:
            skipped.append(Skipped(key, f"cannot be read ({exc.strerror or exc})"))
            continue
        collection.put_file(path=key, kind=kind, size=stat.st_size, mtime_ns=stat.st_mtime_ns, sha256=digest, chunks=chunks)
        indexed.append(key)
        bytes_read += stat.st_size
        chars += sum(len(c.text) for c in chunks)
    ctx.progress("index", done=done, total=total, unit="files", message="files indexed")
    _keep_skipped(collection, skipped, complete=True)

    vectors = _embed_missing(collection, embedder, ctx, stop_info) if embedder is not None else 0
    stats = collection.stats()
    return IndexReport(
        collection=collection.name, files=int(stats["files"]), chunks=int(stats["chunks"]),  # type: ignore[call-overload]
        indexed=indexed, unchanged=unchanged, removed=gone, skipped=skipped, bytes_read=bytes_read, chars=chars,
        seconds=round(time.monotonic() - started, 3), vectors=vectors, embedder=embedder.name if embedder else None)


def _refuse(path: Path, size: int, max_file_bytes: int) -> str | None:
    """Why a file is skipped before it is opened: over the size limit (never read, so a huge or
    sparse file costs nothing)."""
    if size > max_file_bytes:
        return (f"over the size limit: {size / 2**20:,.1f} MB, the limit is {max_file_bytes / 2**20:,.0f} MB "
                "(Settings: docs_max_file_mb)")
    return None


def _embed_missing(collection: Collection, embedder: Embedder, ctx: JobContext, stop_info: Any) -> int:
    """A vector for every chunk without one (all of them when the embedder changed)."""
    if collection.meta("embedder") != embedder.name:
        collection.clear_vectors()
        collection.set_meta("embedder", embedder.name)
    todo = collection.count_without_vectors()
    done = 0
    while True:
        ctx.check(f"Embedding stopped after {done} of {todo} chunks.", **stop_info())
        batch = collection.chunks_without_vectors(EMBED_BATCH)
        if not batch:
            return done
        vectors = embedder.embed([text for _, text in batch])
        collection.put_vectors([(cid, vec) for (cid, _), vec in zip(batch, vectors, strict=True)])
        done += len(batch)
        ctx.progress("embed", done=done, total=todo, unit="chunks", message=f"embedding with {embedder.name}")


def _keep_skipped(collection: Collection, skipped: list[Skipped], *, complete: bool) -> None:
    rows = [(s.path, s.reason) for s in skipped]
    if complete:
        collection.set_skipped(rows)
    elif rows:
        collection.set_skipped([*collection.skipped(), *rows])


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _stopped_message(status: JobStatus, name: str, indexed: int, remaining: int) -> str:
    verb = "Paused" if status is JobStatus.PAUSED else "Cancelled"
    again = f" `hearth docs add {name}` continues." if status is JobStatus.PAUSED else ""
    return f"{verb}: {indexed} file(s) indexed, {remaining} left; what was indexed is kept.{again}"
