"""The docs.* methods through the real dispatcher, and `hearth docs` on the command line."""

from __future__ import annotations

import queue
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from app.runtime.inprocess import InProcessClient
from app.runtime.protocol import EventKind, Method, RuntimeFailure

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def client() -> Any:
    c = InProcessClient()
    yield c
    c.close()


def test_add_search_list_remove_through_the_protocol(client: Any, corpus: Any) -> None:
    report = client.call(Method.DOCS_ADD, {"name": "proto", "paths": [str(corpus.root)]})
    assert report["status"] == "done" and report["files"] == len(report["indexed"]) > 5
    assert {Path(s["path"]).name for s in report["skipped"]} == set(corpus.bad)

    found = client.call(Method.DOCS_SEARCH, {"name": "proto", "query": "Who was elected treasurer of the rowing club?", "k": 3})
    assert found["ranking"] == "bm25" and found["hits"][0]["name"] == "minutes.docx"
    assert {"path", "location", "score", "text", "heading"} <= set(found["hits"][0])

    listed = {c["name"]: c for c in client.call(Method.DOCS_LIST)["collections"]}
    assert listed["proto"]["files"] == report["files"] and len(listed["proto"]["skipped"]) == len(corpus.bad)

    again = client.call(Method.DOCS_ADD, {"name": "proto"})  # opening it again: nothing changed
    assert again["indexed"] == [] and again["unchanged"] == report["files"]

    taken = client.call(Method.DOCS_REMOVE, {"name": "proto", "paths": [str(corpus.root)]})
    assert taken["files_removed"] == report["files"] and not taken["deleted"]
    assert client.call(Method.DOCS_REMOVE, {"name": "proto"})["deleted"]
    with pytest.raises(RuntimeFailure, match="no document collection 'proto'"):
        client.call(Method.DOCS_SEARCH, {"name": "proto", "query": "treasurer"})
    with pytest.raises(RuntimeFailure, match="not a collection name"):
        client.call(Method.DOCS_ADD, {"name": "../escape", "paths": [str(corpus.root)]})
    with pytest.raises(RuntimeFailure, match="No such file or folder"):
        client.call(Method.DOCS_ADD, {"name": "typo", "paths": [str(corpus.root / "nowhere")]})


def test_a_paused_add_ends_paused_and_the_next_add_continues(client: Any, corpus: Any) -> None:
    events: queue.Queue[Any] = queue.Queue()
    request_id = ""

    def on_event(event: Any) -> None:
        if event.event is EventKind.PROGRESS and event.data["stage"] == "index" and event.data["done"] == 2:
            client.pause(request_id)
        events.put(event)

    folders = [str(corpus.root / f) for f in ("notes", "kitchen", "web")]  # six good files
    request_id = client.submit(Method.DOCS_ADD, {"name": "paused", "paths": folders}, on_event)
    while (event := events.get(timeout=60)).event is not EventKind.RESULT:
        assert event.event is not EventKind.ERROR, event.data
    assert event.data["status"] == "paused" and "docs add paused" in event.data["message"]
    assert len(event.data["indexed"]) == 3 and event.data["remaining"] == 3

    done = client.call(Method.DOCS_ADD, {"name": "paused"})
    assert done["status"] == "done" and done["unchanged"] == 3 and len(done["indexed"]) == 3 and done["files"] == 6


def test_hearth_docs_on_the_command_line(corpus: Any, tmp_path: Path) -> None:
    def hearth(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app", "docs", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)

    added = hearth("add", "cli", str(corpus.root / "reports"), str(corpus.root / "bad/secret.pdf"), str(corpus.root / "bad/scan.pdf"))
    assert added.returncode == 0, added.stderr
    assert "2 file(s) indexed" in added.stdout and "secret.pdf: encrypted PDF" in added.stderr and "scan.pdf: PDF without a text layer" in added.stderr
    listed = hearth("ls")
    assert listed.returncode == 0 and "cli" in listed.stdout
    found = hearth("search", "cli", "Orlen glacier retreat", "-k", "1")
    assert found.returncode == 0 and "glacier.pdf, page 2" in found.stdout and "212 metres" in found.stdout
    assert hearth("rm", "cli").returncode == 0
    missing = hearth("search", "cli", "glacier")
    assert missing.returncode == 1 and missing.stderr.startswith("hearth: There is no document collection 'cli'")


def test_documents_are_embedded_with_the_model_the_settings_name_and_searched_hybrid(corpus: Any) -> None:
    """No embedding model in the library: keyword search only (a chat model is never taken behind
    the person's back). Named in the settings (here the chat model SmolLM2, deliberately): every
    chunk gets a vector from it and the search fuses both rankings."""
    from app import settings as app_settings
    from app.runtime.library import embedded_model_path

    before = app_settings.load()
    plain = InProcessClient()
    try:
        report = plain.call(Method.DOCS_ADD, {"name": "plain", "paths": [str(corpus.root / "club" / "minutes.docx")]})
        assert report["vectors"] == 0 and report["embedder"] is None
        assert plain.call(Method.DOCS_SEARCH, {"name": "plain", "query": "treasurer"})["ranking"] == "bm25"
    finally:
        plain.close()
    app_settings.save(replace(before, docs_embedder=str(embedded_model_path())))
    named = InProcessClient()
    try:
        report = named.call(Method.DOCS_ADD, {"name": "dense", "paths": [str(corpus.root / "club" / "minutes.docx")]})
        assert report["embedder"] and report["vectors"] == report["chunks"] > 0
        found = named.call(Method.DOCS_SEARCH, {"name": "dense", "query": "Who was elected treasurer of the rowing club?", "k": 3})
        assert found["ranking"] == "hybrid" and found["hits"][0]["name"] == "minutes.docx"
    finally:
        named.close()
        app_settings.save(before)
