"""Retrieval within a token budget, and hybrid ranking when an embedder wrote the vectors."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.runtime.docs.index import Collection
from app.runtime.docs.indexer import index_collection
from app.runtime.docs.retrieve import retrieve
from app.runtime.jobs import JobContext

LIMIT = 64 * 2**20


def count_tokens(text: str) -> int:
    """A tokenizer-like count: words and punctuation marks."""
    return len(re.findall(r"\w+|[^\w\s]", text))


class HashEmbedder:
    """Bag of words hashed into 256 dimensions: a real vector space, no model needed."""

    def __init__(self, name: str = "hash-bow-256") -> None:
        self.name = name
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        out = []
        for text in texts:
            vec = [0.0] * 256
            for word in re.findall(r"\w+", text.lower()):
                vec[int(hashlib.md5(word.encode()).hexdigest(), 16) % 256] += 1.0
            out.append(vec)
        return out


def _indexed(tmp_path: Path, *sources: Path, embedder: Any = None) -> Collection:
    collection = Collection(tmp_path / "index.sqlite3", "notes")
    collection.add_sources([str(s) for s in sources])
    index_collection(collection, ctx=JobContext.detached(), max_file_bytes=LIMIT, embedder=embedder)
    return collection


def test_small_documents_go_in_whole(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Boat\n\nThe boat is called Heron.\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("The shed key hangs behind the blue door.\n", encoding="utf-8")
    with _indexed(tmp_path, tmp_path / "a.md", tmp_path / "b.txt") as collection:
        got = retrieve(collection, "what is the boat called", count_tokens=count_tokens, budget=500)
        assert got.mode == "whole" and [p.name for p in got.passages] == ["a.md", "b.txt"]
        assert got.passages[0].text == "Boat\n\nThe boat is called Heron." and "fit whole" in got.reason
        assert "[1] a.md, whole document" in got.prompt() and "[2] b.txt, whole document" in got.prompt()
        assert got.tokens == count_tokens(got.prompt()) <= 500


def test_the_best_chunks_that_fit_otherwise(corpus: Any, tmp_path: Path) -> None:
    with _indexed(tmp_path, corpus.root) as collection:
        for budget in (120, 300, 900):
            got = retrieve(collection, "How far did the Orlen glacier retreat?", count_tokens=count_tokens, budget=budget)
            assert got.mode == "chunks"
            assert count_tokens(got.prompt()) == got.tokens <= budget
            assert got.passages[0].name == "glacier.pdf" and got.passages[0].location == "page 2"
            assert "212 metres" in got.passages[0].text
            assert [p.number for p in got.passages] == list(range(1, len(got.passages) + 1))
            assert f"{budget:,} tokens" in got.reason and "do not fit whole" in got.reason
        small = retrieve(collection, "Orlen glacier", count_tokens=count_tokens, budget=120)
        large = retrieve(collection, "Orlen glacier", count_tokens=count_tokens, budget=900)
        assert len(large.passages) > len(small.passages)
        assert retrieve(collection, "Orlen glacier", count_tokens=count_tokens, budget=5).mode == "none"


def test_hybrid_ranking_only_with_the_embedder_that_wrote_the_vectors(corpus: Any, tmp_path: Path) -> None:
    embedder = HashEmbedder()
    with _indexed(tmp_path, corpus.root, embedder=embedder) as collection:
        stats = collection.stats()
        assert stats["vectors"] == stats["chunks"] and stats["embedder"] == embedder.name
        for fact in corpus.facts:
            hits = collection.search(fact.question, k=5, embedder=embedder)
            assert {h.ranking for h in hits} == {"hybrid"}
            assert fact.file in [Path(h.path).relative_to(corpus.root).as_posix() for h in hits], fact.question
        other = HashEmbedder("another-model")
        assert {h.ranking for h in collection.search("Orlen glacier", embedder=other)} == {"bm25"}
        assert other.calls == 0  # never compared with vectors of another model
        assert {h.ranking for h in collection.search("Orlen glacier")} == {"bm25"}

        (corpus.root / "notes/new.md").write_text("The Wexley bridge opened in 1898.\n", encoding="utf-8")
        report = index_collection(collection, ctx=JobContext.detached(), max_file_bytes=LIMIT, embedder=embedder)
        assert report.vectors == 1 and collection.count_without_vectors() == 0  # only the new chunk is embedded
