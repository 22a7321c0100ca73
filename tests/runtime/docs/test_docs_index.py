"""Document collections: every fact is found, only what changed is re-indexed, bad input is named
and skipped, and an indexing job stops cleanly (cancel) or resumably (pause)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from app.runtime.docs.chunk import chunk_blocks
from app.runtime.docs.extract import extract, kind_of
from app.runtime.docs.index import Collection
from app.runtime.docs.indexer import index_collection
from app.runtime.jobs import JobContext, JobStopped
from app.runtime.protocol import EventKind, JobStatus

LIMIT = 64 * 2**20


def _collection(tmp_path: Path, *sources: Path) -> Collection:
    collection = Collection(tmp_path / "index.sqlite3", "test")
    collection.add_sources([str(s) for s in sources])
    return collection


def _good_files(corpus: Any) -> list[Path]:
    return sorted(p for p in corpus.root.rglob("*") if p.is_file() and "bad" not in p.relative_to(corpus.root).parts)


def test_every_fact_is_found_in_the_top_5(corpus: Any, tmp_path: Path) -> None:
    with _collection(tmp_path, corpus.root) as collection:
        report = index_collection(collection, ctx=JobContext.detached(), max_file_bytes=LIMIT)
        assert sorted(report.indexed) == [str(p) for p in _good_files(corpus)]
        for fact in corpus.facts:
            hits = collection.search(fact.question, k=5)
            names = [Path(h.path).relative_to(corpus.root).as_posix() for h in hits]
            assert fact.file in names, f"{fact.question!r} found {names}"
            hit = hits[names.index(fact.file)]
            assert fact.needle in hit.text, f"{fact.question!r}: the chunk of {fact.file} does not hold {fact.needle!r}"
            if fact.page is not None:
                assert hit.page == fact.page and hit.location() == f"page {fact.page}"


def test_chunks_remember_structure_and_lines(corpus: Any) -> None:
    md = corpus.root / "notes/lighthouse.md"
    chunks = chunk_blocks(extract(md, "markdown"))
    vellmar = next(c for c in chunks if "ochre in 1931" in c.text)
    assert vellmar.heading == "Coastal notes > The Vellmar lighthouse"
    lines = md.read_text().split("\n")
    assert "ochre in 1931" in "\n".join(lines[vellmar.line_start - 1:vellmar.line_end])
    html = chunk_blocks(extract(corpus.root / "web/ferry.html", "html"))
    assert not any("color: red" in c.text or "var harbour" in c.text for c in html)  # style and script are not text
    assert any(c.heading.endswith("Tarvik") and "06:40 every Thursday & returns" in c.text for c in html)
    docx_chunks = chunk_blocks(extract(corpus.root / "club/minutes.docx", "docx"))
    assert any(c.heading.endswith("Elections") and "Nandakumar" in c.text for c in docx_chunks)
    assert any("Next meeting | March" in c.text for c in docx_chunks)
    assert kind_of(corpus.root / "src/README") == "text" and kind_of(corpus.root / "src/sensor.py") == "code"


def test_a_changed_file_is_reindexed_alone(corpus: Any, tmp_path: Path) -> None:
    with _collection(tmp_path, corpus.root) as collection:
        index_collection(collection, ctx=JobContext.detached(), max_file_bytes=LIMIT)
        jam = corpus.root / "kitchen/jam.txt"
        jam.write_text(jam.read_text() + "\n\nThe jam keeps for nine months in the Pellworth cellar.\n", encoding="utf-8")
        touched = corpus.root / "kitchen/marmalade.txt"  # a new time, the same bytes: not re-read
        os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
        gone = corpus.root / "reports/ice.pdf"
        gone.unlink()

        report = index_collection(collection, ctx=JobContext.detached(), max_file_bytes=LIMIT)
        assert report.indexed == [str(jam)]
        assert report.removed == [str(gone)]
        assert report.unchanged == len(_good_files(corpus)) - 1
        assert collection.files()[str(touched)].mtime_ns == touched.stat().st_mtime_ns
        assert Path(collection.search("How long does the jam keep in the Pellworth cellar?", k=1)[0].path) == jam
        assert not any(Path(h.path) == gone for h in collection.search("ice cores northern glacier", k=10))


def test_each_bad_input_is_named_and_skipped(corpus: Any, tmp_path: Path) -> None:
    with _collection(tmp_path, corpus.root) as collection:
        report = index_collection(collection, ctx=JobContext.detached(), max_file_bytes=LIMIT)
        reasons = {Path(s.path).name: s.reason for s in report.skipped}
        assert set(reasons) == set(corpus.bad), reasons
        for name, word in corpus.bad.items():
            assert word in reasons[name], (name, reasons[name])
        assert len(report.indexed) == len(_good_files(corpus))  # the rest is indexed
        assert sorted(p for p, _ in collection.skipped()) == sorted(s.path for s in report.skipped)


def test_an_unreadable_folder_keeps_what_was_indexed_from_it(corpus: Any, tmp_path: Path) -> None:
    os.chmod(corpus.locked, 0o700)
    with _collection(tmp_path, corpus.root) as collection:
        index_collection(collection, ctx=JobContext.detached(), max_file_bytes=LIMIT)
        diary = str(corpus.locked / "inside.txt")
        assert diary in collection.files()
        os.chmod(corpus.locked, 0)
        report = index_collection(collection, ctx=JobContext.detached(), max_file_bytes=LIMIT)
        assert diary not in report.removed and diary in collection.files()
        assert any(s.path == str(corpus.locked) and "cannot be read" in s.reason for s in report.skipped)


def _stopping_context(stop_after: int, how: str) -> tuple[JobContext, list[dict[str, Any]]]:
    """A job context that asks to stop once ``stop_after`` files are reported done."""
    seen: list[dict[str, Any]] = []

    def emit(event: Any) -> None:
        if event.event is EventKind.PROGRESS and event.data["stage"] == "index":
            seen.append(event.data)
            if event.data["done"] == stop_after:
                getattr(ctx, how)()

    ctx = JobContext("index-test", emit, pausable=True)
    return ctx, seen


def _consistent(collection: Collection) -> None:
    """Every indexed file holds exactly the chunks a fresh extraction gives: none is half in."""
    for path, row in collection.files().items():
        expected = [c.text for c in chunk_blocks(extract(Path(path), row.kind))]
        stored = [r[0] for r in collection.db.execute("SELECT text FROM chunks WHERE file_id = ? ORDER BY ord", (row.id,))]
        assert stored == expected, path
        fts = collection.db.execute("SELECT count(*) FROM chunks_fts WHERE rowid IN (SELECT id FROM chunks WHERE file_id = ?)", (row.id,)).fetchone()[0]
        assert fts == len(expected), path


@pytest.mark.parametrize("how", ["pause", "cancel"])
def test_a_stopped_job_keeps_whole_files_and_the_next_run_continues(corpus: Any, tmp_path: Path, how: str) -> None:
    good = _good_files(corpus)
    with _collection(tmp_path, *good) as collection:
        ctx, seen = _stopping_context(3, how)
        with pytest.raises(JobStopped) as stopped:
            index_collection(collection, ctx=ctx, max_file_bytes=LIMIT)
        expected = JobStatus.PAUSED if how == "pause" else JobStatus.CANCELLED
        assert stopped.value.status is expected
        assert len(stopped.value.kept["indexed"]) == 4  # the file in hand when the stop came is finished whole
        assert stopped.value.kept["remaining"] == len(good) - 4
        assert sorted(collection.files()) == sorted(stopped.value.kept["indexed"])
        _consistent(collection)

        report = index_collection(collection, ctx=JobContext.detached(), max_file_bytes=LIMIT)
        assert report.unchanged == 4 and len(report.indexed) == len(good) - 4
        assert report.files == len(good)
        _consistent(collection)
