"""A chat that answers from a collection (ChatParams.docs) with the real SmolLM2 in llama.cpp:
whole documents when they fit, placed so that the next question reuses their evaluated prefix;
otherwise the best chunks that fit; the result says which and why."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.runtime import hardware, library
from app.runtime.docs import store
from app.runtime.docs.chat import documents_budget, place
from app.runtime.docs.indexer import index_collection
from app.runtime.docs.retrieve import Passage, Retrieval
from app.runtime.jobs import JobContext
from app.runtime.chat_params import ChatParams
from app.runtime.protocol import RuntimeFailure
from app.runtime.services.engine import EngineService

LIMIT = 64 * 2**20


def make_collection(name: str, *paths: Path) -> None:
    with store.open_collection(name, create=True) as collection:
        collection.add_sources([str(p) for p in paths])
        index_collection(collection, ctx=JobContext.detached(), max_file_bytes=LIMIT)


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineService]:
    models = library.scan([])
    hw = hardware.probe()
    service = EngineService(models=lambda: models, hardware=lambda: hw, default_prefs=lambda: {})
    yield service
    service.close()


def ask(engine: EngineService, messages: list[dict[str, str]], docs: dict[str, Any], n_ctx: int) -> dict[str, Any]:
    params = ChatParams.from_dict({"messages": messages, "docs": docs, "prefs": {"context_length": n_ctx},
                                   "sampling": {"max_tokens": 4, "temperature": 0.0, "seed": 1}})
    result = engine.chat(params, JobContext.detached())
    return {"text": result.text, "usage": result.usage, "docs": result.docs, "context": result.context}


def test_small_documents_go_in_whole_and_their_prefix_serves_the_next_question(engine: EngineService, tmp_path: Path) -> None:
    (tmp_path / "ferry.txt").write_text("The Tarvik ferry leaves the harbour at 06:40 every Thursday.\n", encoding="utf-8")
    (tmp_path / "jam.md").write_text("# Jam\n\nGrandmother Ilse's quince jam needs 400 grams of quince.\n", encoding="utf-8")
    make_collection("chat-whole", tmp_path)
    system = {"role": "system", "content": "You are brief."}
    first = ask(engine, [system, {"role": "user", "content": "When does the ferry leave?"}], {"collection": "chat-whole"}, 1024)
    docs = first["docs"]
    assert docs["mode"] == "whole" and "fit whole" in docs["reason"]
    assert sorted(p["name"] for p in docs["passages"]) == ["ferry.txt", "jam.md"]
    assert all(p["location"] == "whole document" for p in docs["passages"])

    # The next question: the system prompt with the documents is the same prefix, already evaluated.
    second = ask(engine, [system, {"role": "user", "content": "When does the ferry leave?"},
                          {"role": "assistant", "content": first["text"]},
                          {"role": "user", "content": "How much quince goes into the jam?"}], {"collection": "chat-whole"}, 1024)
    assert second["docs"]["mode"] == "whole"
    whole_prefix = docs["tokens"]  # the documents' block alone
    assert second["usage"]["cached_tokens"] > whole_prefix
    assert second["context"]["evaluated_tokens"] < second["usage"]["prompt_tokens"] - whole_prefix


def test_a_collection_too_big_for_the_context_gives_the_best_chunks(engine: EngineService, corpus: Any) -> None:
    make_collection("chat-chunks", corpus.root)
    got = ask(engine, [{"role": "user", "content": "How far did the Orlen glacier retreat?"}],
              {"collection": "chat-chunks", "max_passages": 3}, 1024)
    docs = got["docs"]
    assert docs["mode"] == "chunks" and "do not fit whole" in docs["reason"]
    assert 1 <= len(docs["passages"]) <= 3 and docs["tokens"] <= docs["budget"]
    best = docs["passages"][0]
    assert (best["name"], best["page"], best["number"]) == ("glacier.pdf", 2, 1)
    assert "212 metres" in best["text"]
    assert got["usage"]["prompt_tokens"] + 4 <= 1024  # the passages and the question fit with the reply


def test_an_unknown_collection_is_named(engine: EngineService) -> None:
    with pytest.raises(RuntimeFailure, match="no document collection 'nothing-here'"):
        ask(engine, [{"role": "user", "content": "hi"}], {"collection": "nothing-here"}, 1024)
    with pytest.raises(RuntimeFailure, match="docs.collection"):
        ChatParams.from_dict({"messages": [{"role": "user", "content": "hi"}], "docs": {"collection": 3}})


def test_placement_keeps_the_prefix_and_the_budget_follows_the_policy() -> None:
    passage = Passage(1, "/d/notes.md", "whole document", "", "Lyon is on the Rhone.", 9)
    messages = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1"},
                {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"})
    whole = place(messages, Retrieval("c", "Q2", "whole", [passage], 20, 100, "fits"))
    assert whole[0]["content"].startswith("Be brief.\n\n") and "[1] notes.md, whole document" in whole[0]["content"]
    assert whole[1:] == messages[1:]  # only the system message changes: the same for every question
    chunk = Passage(1, "/d/notes.md", "line 3", "", "Lyon is on the Rhone.", 9, 1.5, None, 3)
    chunks = place(messages, Retrieval("c", "Q2", "chunks", [chunk], 20, 100, "best"))
    assert chunks[:3] == messages[:3] and chunks[3]["content"].endswith("\n\nQuestion: Q2")
    assert "[1] notes.md, line 3" in chunks[3]["content"]

    # a conversation that fills the context: a forgetting policy still keeps a quarter for documents
    assert documents_budget(1024, conversation=1000, max_tokens=64, policy="rolling_window").documents == 256  # type: ignore[union-attr]
    assert documents_budget(1024, conversation=1000, max_tokens=64, policy="stop_at_limit") is None
    roomy = documents_budget(4096, conversation=100, max_tokens=512, policy="stop_at_limit")
    assert roomy is not None and roomy.documents == 4096 - 512 - 100 - 8


def test_hearth_chat_with_docs_prints_the_sources(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "ferry.txt").write_text("The Tarvik ferry leaves the harbour at 06:40 every Thursday.\n", encoding="utf-8")

    def hearth(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True, timeout=600)

    assert hearth("docs", "add", "cli-chat", str(tmp_path)).returncode == 0
    done = hearth("chat", "When does the Tarvik ferry leave?", "--docs", "cli-chat", "--max-tokens", "4", "--temperature", "0", "--ctx", "1024")
    assert done.returncode == 0, done.stderr
    assert f"Sources:\n[1] {tmp_path / 'ferry.txt'}, whole document" in done.stdout
    assert "fit whole" in done.stderr
    missing = hearth("chat", "hi", "--docs", "no-such-collection", "--max-tokens", "2")
    assert missing.returncode != 0 and "no document collection 'no-such-collection'" in missing.stderr
