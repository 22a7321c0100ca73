"""One collection's index: a SQLite file with its sources, files, chunks, FTS5 and vectors.

* ``sources``: the files and folders the person added (re-indexing walks them again);
* ``files``: one row per indexed file with (size, mtime, sha256), what incremental indexing
  compares, and the last run's skipped files with their reasons;
* ``chunks`` and ``chunks_fts``: the text, searched with BM25 (FTS5, Porter stemming) over the
  text and, at a lower weight, the section headings;
* ``vectors``: one embedding per chunk, written only when an `Embedder` is given; search fuses the
  two rankings (reciprocal rank fusion) only when the query's embedder is the one that wrote them.
  There is no default embedder: a chat model is never used as one behind the person's back.

A file is written in one transaction (its old chunks out, its new ones in), so an indexing run
stopped at any point leaves every file either as it was or wholly new. The database is in WAL
mode: a search reads while a run writes.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from app.runtime.docs.chunk import Chunk

SCHEMA_VERSION = 1
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009): 1 / (k + rank)
HEADING_WEIGHT = 0.5

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (path TEXT PRIMARY KEY, added REAL NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, chars INTEGER NOT NULL, pages INTEGER,
    indexed REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    ord INTEGER NOT NULL, text TEXT NOT NULL, heading TEXT NOT NULL, page INTEGER,
    line_start INTEGER NOT NULL, line_end INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_file ON chunks(file_id, ord);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(text, heading, tokenize='porter unicode61 remove_diacritics 2');
CREATE TABLE IF NOT EXISTS vectors (chunk_id INTEGER PRIMARY KEY REFERENCES chunks(id) ON DELETE CASCADE, vec BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS skipped (path TEXT PRIMARY KEY, reason TEXT NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');
"""

# Words that say nothing about where an answer is; left out of the query (BM25 would give them
# little weight anyway, but an OR of twenty of them still outvotes the one word that matters).
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most
my myself no nor not of off on once only or other our ours ourselves out over own same she should so
some such than that the their theirs them themselves then there these they this those through to too
under until up very was we were what when where which while who whom why will with would you your
yours yourself yourselves whose did does tell said say says according named name called
""".split())


class Embedder(Protocol):
    """What turns texts into vectors (an embedding model). ``name`` says which, so vectors of one
    model are never compared with another's."""

    name: str

    def embed(self, texts: Sequence[str]) -> Sequence[Sequence[float]]: ...


@dataclass(frozen=True)
class FileRow:
    id: int
    path: str
    kind: str
    size: int
    mtime_ns: int
    sha256: str
    chars: int
    pages: int | None


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    path: str
    kind: str
    text: str
    heading: str
    page: int | None
    line_start: int
    line_end: int
    score: float  # higher is better: -BM25, or the fused score in hybrid ranking
    ranking: str  # "bm25" or "hybrid"

    def location(self) -> str:
        """Where the passage is, as a person cites it: page, lines or paragraphs."""
        lines = f"{self.line_start}" if self.line_start == self.line_end else f"{self.line_start}-{self.line_end}"
        if self.page is not None:
            return f"page {self.page}"
        if self.kind == "docx":
            return f"paragraph{'s' if '-' in lines else ''} {lines}"
        return f"line{'s' if '-' in lines else ''} {lines}"

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "name": Path(self.path).name, "location": self.location(), "page": self.page,
                "line_start": self.line_start, "line_end": self.line_end, "heading": self.heading,
                "score": round(self.score, 6), "ranking": self.ranking, "text": self.text, "chunk_id": self.chunk_id}


def match_query(query: str) -> str:
    """A question as an FTS5 query: its words, less stopwords, each quoted, joined by OR (BM25 then
    ranks chunks holding more and rarer words first); '' when nothing is left."""
    words = [w for w in re.findall(r"\w+", query.lower()) if len(w) > 1 or w.isdigit()]
    kept = [w for w in words if w not in STOPWORDS] or words
    unique = list(dict.fromkeys(kept))[:48]
    return " OR ".join(f'"{w}"' for w in unique)


class Collection:
    """An open collection index (one SQLite connection; open one per thread)."""

    def __init__(self, path: Path, name: str = "") -> None:
        self.path = path
        self.name = name or path.stem
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- sources and files ----------------------------------------------------------------------

    def sources(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT path FROM sources ORDER BY added, path")]

    def add_sources(self, paths: Sequence[str]) -> None:
        now = time.time()
        with self._transaction():
            self.db.executemany("INSERT OR IGNORE INTO sources VALUES (?, ?)", [(p, now) for p in paths])

    def remove_sources(self, paths: Sequence[str]) -> None:
        with self._transaction():
            self.db.executemany("DELETE FROM sources WHERE path = ?", [(p,) for p in paths])

    def files(self) -> dict[str, FileRow]:
        rows = self.db.execute("SELECT id, path, kind, size, mtime_ns, sha256, chars, pages FROM files")
        return {r[1]: FileRow(*r) for r in rows}

    def touch(self, path: str, mtime_ns: int) -> None:
        """A file whose time changed but whose bytes did not (same hash): remember the new time."""
        with self._transaction():
            self.db.execute("UPDATE files SET mtime_ns = ? WHERE path = ?", (mtime_ns, path))

    def put_file(self, *, path: str, kind: str, size: int, mtime_ns: int, sha256: str, chunks: Sequence[Chunk]) -> int:
        """Replace a file's chunks with ``chunks`` in one transaction; returns its file id."""
        chars = sum(len(c.text) for c in chunks)
        pages = max((c.page for c in chunks if c.page is not None), default=None)
        with self._transaction():
            self._delete_file(path)
            cur = self.db.execute(
                "INSERT INTO files (path, kind, size, mtime_ns, sha256, chars, pages, indexed) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (path, kind, size, mtime_ns, sha256, chars, pages, time.time()))
            file_id = int(cur.lastrowid or 0)
            for ord_, chunk in enumerate(chunks):
                cur = self.db.execute(
                    "INSERT INTO chunks (file_id, ord, text, heading, page, line_start, line_end) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (file_id, ord_, chunk.text, chunk.heading, chunk.page, chunk.line_start, chunk.line_end))
                chunk_id = cur.lastrowid
                self.db.execute("INSERT INTO chunks_fts (rowid, text, heading) VALUES (?, ?, ?)", (chunk_id, chunk.text, chunk.heading))
            self.db.execute("DELETE FROM skipped WHERE path = ?", (path,))
        return file_id

    def remove_files(self, paths: Sequence[str]) -> None:
        for path in paths:
            with self._transaction():
                self._delete_file(path)

    def _delete_file(self, path: str) -> None:
        row = self.db.execute("SELECT id FROM files WHERE path = ?", (path,)).fetchone()
        if row is None:
            return
        ids = [r[0] for r in self.db.execute("SELECT id FROM chunks WHERE file_id = ?", (row[0],))]
        self.db.executemany("DELETE FROM chunks_fts WHERE rowid = ?", [(i,) for i in ids])
        self.db.executemany("DELETE FROM vectors WHERE chunk_id = ?", [(i,) for i in ids])
        self.db.execute("DELETE FROM chunks WHERE file_id = ?", (row[0],))
        self.db.execute("DELETE FROM files WHERE id = ?", (row[0],))

    def set_skipped(self, skipped: Sequence[tuple[str, str]]) -> None:
        """The last run's skipped files and reasons (what `docs ls` and the studio show)."""
        with self._transaction():
            self.db.execute("DELETE FROM skipped")
            self.db.executemany("INSERT OR REPLACE INTO skipped VALUES (?, ?)", skipped)

    def skipped(self) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in self.db.execute("SELECT path, reason FROM skipped ORDER BY path")]

    def stats(self) -> dict[str, object]:
        files, chars = self.db.execute("SELECT count(*), coalesce(sum(chars), 0) FROM files").fetchone()
        chunks = self.db.execute("SELECT count(*) FROM chunks").fetchone()[0]
        vectors = self.db.execute("SELECT count(*) FROM vectors").fetchone()[0]
        updated = self.db.execute("SELECT max(indexed) FROM files").fetchone()[0]
        return {"name": self.name, "files": files, "chunks": chunks, "chars": chars, "vectors": vectors,
                "embedder": self.meta("embedder"), "sources": self.sources(), "updated": updated,
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped()], "index": str(self.path)}

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str | None) -> None:
        with self._transaction():
            if value is None:
                self.db.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # ---- vectors --------------------------------------------------------------------------------

    def count_without_vectors(self) -> int:
        return int(self.db.execute(
            "SELECT count(*) FROM chunks c LEFT JOIN vectors v ON v.chunk_id = c.id WHERE v.chunk_id IS NULL").fetchone()[0])

    def chunks_without_vectors(self, limit: int) -> list[tuple[int, str]]:
        return [(r[0], r[1]) for r in self.db.execute(
            "SELECT c.id, c.text FROM chunks c LEFT JOIN vectors v ON v.chunk_id = c.id WHERE v.chunk_id IS NULL ORDER BY c.id LIMIT ?",
            (limit,))]

    def put_vectors(self, rows: Sequence[tuple[int, Sequence[float]]]) -> None:
        with self._transaction():
            self.db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)", [(i, _pack(v)) for i, v in rows])

    def clear_vectors(self) -> None:
        with self._transaction():
            self.db.execute("DELETE FROM vectors")

    # ---- reading --------------------------------------------------------------------------------

    def documents(self) -> Iterator[tuple[str, str, str]]:
        """Every file as (path, kind, its whole text), rebuilt from its chunks in order."""
        for file_id, path, kind in self.db.execute("SELECT id, path, kind FROM files ORDER BY path").fetchall():
            parts = [r[0] for r in self.db.execute("SELECT text FROM chunks WHERE file_id = ? ORDER BY ord", (file_id,))]
            yield path, kind, "\n\n".join(parts)

    def total_chars(self) -> int:
        return int(self.db.execute("SELECT coalesce(sum(chars), 0) FROM files").fetchone()[0])

    def search(self, query: str, *, k: int = 5, embedder: Embedder | None = None, candidates: int = 50) -> list[Hit]:
        """The ``k`` best chunks for ``query``: BM25, fused with vector similarity when ``embedder``
        wrote this collection's vectors (else BM25 alone)."""
        bm25 = self._bm25(query, max(k, candidates))
        if embedder is None or self.meta("embedder") != embedder.name or not self._has_vectors():
            return [self._hit(cid, score, "bm25") for cid, score in bm25[:k]]
        dense = self._dense(query, embedder, max(k, candidates))
        fused: dict[int, float] = {}
        for ranking in (bm25, dense):
            for rank, (cid, _) in enumerate(ranking):
                fused[cid] = fused.get(cid, 0.0) + 1.0 / (RRF_K + rank + 1)
        best = sorted(fused.items(), key=lambda kv: -kv[1])[:k]
        return [self._hit(cid, score, "hybrid") for cid, score in best]

    def _bm25(self, query: str, limit: int) -> list[tuple[int, float]]:
        expression = match_query(query)
        if not expression:
            return []
        rows = self.db.execute(
            f"SELECT rowid, bm25(chunks_fts, 1.0, {HEADING_WEIGHT}) AS rank FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY rank LIMIT ?",
            (expression, limit))
        return [(int(r[0]), -float(r[1])) for r in rows]

    def _has_vectors(self) -> bool:
        return self.db.execute("SELECT 1 FROM vectors LIMIT 1").fetchone() is not None

    def _dense(self, query: str, embedder: Embedder, limit: int) -> list[tuple[int, float]]:
        """Cosine similarity of the query with every stored vector (a full scan: fine for the
        tens of thousands of chunks of a personal collection)."""
        import numpy as np

        ids, blobs = [], []
        for chunk_id, blob in self.db.execute("SELECT chunk_id, vec FROM vectors"):
            ids.append(chunk_id)
            blobs.append(blob)
        matrix = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), -1)
        q = np.asarray(embedder.embed([query])[0], dtype=np.float32)
        norms = np.linalg.norm(matrix, axis=1) * (np.linalg.norm(q) or 1.0)
        scores = matrix @ q / np.where(norms == 0, 1.0, norms)
        order = np.argsort(-scores)[:limit]
        return [(int(ids[i]), float(scores[i])) for i in order]

    def _hit(self, chunk_id: int, score: float, ranking: str) -> Hit:
        row = self.db.execute(
            "SELECT f.path, f.kind, c.text, c.heading, c.page, c.line_start, c.line_end FROM chunks c JOIN files f ON f.id = c.file_id WHERE c.id = ?",
            (chunk_id,)).fetchone()
        return Hit(chunk_id, row[0], row[1], row[2], row[3], row[4], row[5], row[6], score, ranking)

    # ---- transactions ----------------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (a file is all in or all out)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _pack(vector: Sequence[float]) -> bytes:
    import numpy as np

    return np.asarray(vector, dtype=np.float32).tobytes()
