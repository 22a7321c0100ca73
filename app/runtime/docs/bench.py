"""`hearth bench docs`: retrieval quality and speed on a book that ships with Hearth.

The book is Jane Austen's *Persuasion* (resources/texts/persuasion.txt, public domain); the
questions are resources/texts/persuasion-questions.json, each with a verbatim quote of the
passage its answer lives in. A question is answered at k when one of the k best chunks overlaps
the quote's lines. Figures:

* ``recall_at_5`` (and at 1 and 10, and the mean reciprocal rank) with BM25 -- the ranking every
  collection has. Hybrid figures need an embedding model in the library; none is used by default,
  and a chat model standing in as embedder would be labelled so;
* indexing speed in MB of extracted text per second (median of ``runs`` fresh indexes);
* query time in milliseconds (median and 95th percentile over the questions, top 5).
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from app.paths import resource_folders
from app.runtime.docs.chunk import LIMIT_CHARS, TARGET_CHARS
from app.runtime.docs.index import Collection, Hit
from app.runtime.docs.indexer import index_collection
from app.runtime.jobs import JobContext
from app.runtime.protocol import ErrorKind, RuntimeFailure

QUESTIONS = "texts/persuasion-questions.json"


def _resource(relative: str) -> Path:
    for folder in resource_folders():
        if (folder / relative).is_file():
            return folder / relative
    raise RuntimeFailure(ErrorKind.INTERNAL, f"{relative} is missing from Hearth's resources")


def evidence_lines(text: str, quote: str) -> tuple[int, int]:
    """The first and last line of ``quote`` in ``text`` (whitespace may differ)."""
    pattern = r"\s+".join(re.escape(word) for word in quote.split())
    found = re.search(pattern, text)
    if found is None:
        raise ValueError(f"evidence not in the text: {quote!r}")
    return text.count("\n", 0, found.start()) + 1, text.count("\n", 0, found.end()) + 1


def _rank(hits: list[Hit], lines: tuple[int, int]) -> int | None:
    """1-based rank of the first hit that overlaps the evidence lines, None when none does."""
    for rank, hit in enumerate(hits, start=1):
        if hit.line_start <= lines[1] and hit.line_end >= lines[0]:
            return rank
    return None


def run(*, runs: int = 3) -> dict[str, Any]:
    spec = json.loads(_resource(QUESTIONS).read_text(encoding="utf-8"))
    book = _resource(spec["text"])
    text = book.read_text(encoding="utf-8")
    questions = [(q["question"], evidence_lines(text, q["evidence"])) for q in spec["questions"]]
    index_seconds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="hearth-docs-bench-") as tmp:
        for attempt in range(max(runs, 1)):
            collection = Collection(Path(tmp) / f"bench-{attempt}.sqlite3", "bench")
            collection.add_sources([str(book)])
            report = index_collection(collection, ctx=JobContext.detached("bench"), max_file_bytes=2**30)
            index_seconds.append(report.seconds)
            if attempt < runs - 1:
                collection.close()
        ranks: list[int | None] = []
        query_ms: list[float] = []
        misses = []
        for question, lines in questions:
            started = time.perf_counter()
            hits = collection.search(question, k=10)
            query_ms.append((time.perf_counter() - started) * 1000)
            rank = _rank(hits, lines)
            ranks.append(rank)
            if rank is None or rank > 5:
                misses.append({"question": question, "lines": list(lines), "rank": rank,
                               "top": f"{Path(hits[0].path).name}, {hits[0].location()}" if hits else None})
        chunks = int(collection.stats()["chunks"])  # type: ignore[call-overload]
        collection.close()
    n = len(questions)
    seconds = statistics.median(index_seconds)
    return {
        "suite": "docs",
        "text": {"file": spec["text"], "bytes": book.stat().st_size, "chars": report.chars, "chunks": chunks,
                 "chunk_target_chars": TARGET_CHARS, "chunk_limit_chars": LIMIT_CHARS},
        "questions": n,
        "ranking": "bm25",
        "hybrid": "not measured: no embedding model in the library (a chat model is never used as one by default)",
        "recall_at_1": round(sum(1 for r in ranks if r is not None and r <= 1) / n, 4),
        "recall_at_5": round(sum(1 for r in ranks if r is not None and r <= 5) / n, 4),
        "recall_at_10": round(sum(1 for r in ranks if r is not None) / n, 4),
        "mrr_at_10": round(sum(1 / r for r in ranks if r is not None) / n, 4),
        "index_mb_per_s": round(report.chars / 1e6 / seconds, 2) if seconds else None,
        "index_seconds": {"median": round(seconds, 4), "runs": index_seconds},
        "query_ms": {"median": round(statistics.median(query_ms), 3),
                     "p95": round(sorted(query_ms)[max(int(0.95 * n) - 1, 0)], 3), "k": 10},
        "misses_at_5": misses,
    }


def suite(args: Any, measurements: Any) -> dict[str, Any]:
    """`hearth bench docs` (nothing goes into the measurement store: no plan reads these)."""
    return run(runs=max(getattr(args, "runs", 3), 1))
