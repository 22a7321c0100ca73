"""The model-manager methods through the dispatcher (InProcessClient), against the fake Hub."""

from __future__ import annotations

import importlib.util
import os
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app import settings
from app.paths import paths
from app.runtime.inprocess import InProcessClient
from app.runtime.hub import transfer
from app.runtime.protocol import ErrorKind, EventKind, Method, RuntimeFailure

_spec = importlib.util.spec_from_file_location("hub_fixture", Path(__file__).with_name("hub_fixture.py"))
assert _spec is not None and _spec.loader is not None
hub_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hub_fixture)
REPO, GGUF_NAME = hub_fixture.REPO, hub_fixture.GGUF_NAME


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    server = hub_fixture.start(tmp_path, monkeypatch)
    yield server
    server.stop()


@pytest.fixture
def client(fake_hub: Any) -> Iterator[InProcessClient]:
    c = InProcessClient()
    yield c
    c.close()


def run(client: InProcessClient, method: Method, params: dict[str, Any], *, stop_after: int | None = None,
        stop: str = "pause") -> tuple[list[dict[str, Any]], Any]:
    """Progress events and the final event of a request. Once ``stop_after`` bytes are in, ``stop``
    ("pause" or "cancel") is sent from inside that progress event, so the job meets it at its next check."""
    events: queue.Queue[Any] = queue.Queue()
    sent = False

    def on_event(event: Any) -> None:
        nonlocal sent
        if event.event is EventKind.PROGRESS and stop_after is not None and not sent and (event.data.get("done") or 0) >= stop_after:
            sent = True
            getattr(client, stop)(event.id)
        events.put(event)

    client.submit(method, params, on_event)
    progress: list[dict[str, Any]] = []
    while True:
        event = events.get(timeout=120)
        if event.event is EventKind.PROGRESS:
            progress.append(event.data)
        elif event.is_final:
            return progress, event


def partials() -> list[Path]:
    return list((paths().models / hub_fixture.REPO_DIR / transfer.PARTIAL_DIR).glob("*.incomplete"))


def test_search_and_files_with_fit_badges(client: InProcessClient) -> None:
    assert [m["id"] for m in client.call(Method.HUB_SEARCH, {"query": "smol"})["models"]] == [REPO]
    by_likes = client.call(Method.HUB_SEARCH, {"query": "hearth", "sort": "likes"})["models"]
    assert [m["id"] for m in by_likes] == ["hearth-test/other-GGUF", REPO]
    with pytest.raises(RuntimeFailure, match="'sort' must be one of"):
        client.call(Method.HUB_SEARCH, {"query": "x", "sort": "size"})

    listing = client.call(Method.HUB_FILES, {"repo_id": REPO})
    assert listing["fit_source"] == "size"  # nothing of this repository is here yet
    variants = {v["name"]: v for v in listing["variants"]}
    assert list(variants) == ["Q2_K", "Q4_1", "Q8_0"]
    assert all(v["fit"] in ("gpu", "partial", "cpu") and v["fit_text"] and not v["downloaded"] for v in variants.values())
    assert [n for n, v in variants.items() if v["recommended"]] == ["Q4_1"]  # the best quality up to Q4_K_M
    with pytest.raises(RuntimeFailure) as missing:
        client.call(Method.HUB_FILES, {"repo_id": "hearth-test/nope"})
    assert missing.value.kind is ErrorKind.MODEL_NOT_FOUND


def test_download_pause_resume_lands_in_the_library(client: InProcessClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "PROGRESS_INTERVAL", 0.0)
    size = hub_fixture.real_gguf().size
    progress, final = run(client, Method.HUB_DOWNLOAD, {"repo_id": REPO}, stop_after=20 * 2**20)
    assert final.event is EventKind.RESULT and final.data["status"] == "paused" and "paused at" in final.data["message"]
    assert progress[0]["stage"] == "chosen" and progress[0]["variant"] == "Q4_1"
    listing = client.call(Method.HUB_FILES, {"repo_id": REPO})
    kept = next(v for v in listing["variants"] if v["name"] == "Q4_1")["partial_bytes"]
    assert 20 * 2**20 <= kept < size
    assert {k: final.data[k] for k in ("repo_id", "files", "filename", "downloaded", "total")} == {
        "repo_id": REPO, "files": [GGUF_NAME], "filename": GGUF_NAME, "downloaded": kept, "total": size}

    progress, final = run(client, Method.HUB_DOWNLOAD, {"repo_id": REPO, "variant": "Q4_1"})
    assert final.event is EventKind.RESULT, final.data
    target = paths().models / hub_fixture.REPO_DIR / GGUF_NAME
    assert final.data["paths"] == [str(target)] and final.data["bytes"] == size
    assert final.data["status"] == "done"
    assert next(p for p in progress if p["stage"] == "download")["done"] == kept  # resumed, not restarted
    models = client.call(Method.MODELS_LIST)["models"]
    assert any(m["path"] == str(target) for m in models)

    listing = client.call(Method.HUB_FILES, {"repo_id": REPO})
    assert listing["fit_source"] == "model"  # the downloaded file's shape gives exact badges now
    assert next(v for v in listing["variants"] if v["name"] == "Q4_1")["downloaded"]

    # a paused download dropped for good: its partial file is discarded
    _, final = run(client, Method.HUB_DOWNLOAD, {"repo_id": REPO, "filename": GGUF_NAME}, stop_after=10 * 2**20)
    assert final.data["status"] == "paused" and partials()
    freed = client.call(Method.HUB_DISCARD, {"repo_id": REPO, "filename": GGUF_NAME})["freed"]
    assert freed >= 10 * 2**20 and not partials()

    # a cancel of a running download removes its partial file itself; the finished copy stays
    _, final = run(client, Method.HUB_DOWNLOAD, {"repo_id": REPO, "filename": GGUF_NAME}, stop_after=10 * 2**20, stop="cancel")
    assert final.event is EventKind.RESULT and final.data["status"] == "cancelled", final.data
    assert "removed" in final.data["message"] and not partials() and target.stat().st_size == size

    # delete after the UI's confirmation: bytes freed, gone from the library; the embedded model stays
    done = client.call(Method.MODELS_DELETE, {"model": str(target)})
    assert done["freed"] == size and not target.exists()
    assert not any(m["path"] == str(target) for m in client.call(Method.MODELS_LIST)["models"])
    with pytest.raises(RuntimeFailure) as refused:
        client.call(Method.MODELS_DELETE, {"model": "smollm2-135m-instruct-q4_1"})
    assert refused.value.kind is ErrorKind.UNSUPPORTED


def test_add_folder_saves_it_and_the_library_reads_it(client: InProcessClient, tmp_path: Path, model_path: Path) -> None:
    folder = tmp_path / "my models"
    folder.mkdir()
    os.symlink(model_path, folder / "copy.Q4_1.gguf")
    done = client.call(Method.MODELS_ADD_FOLDER, {"path": str(folder)})
    assert done["added"] and done["found"] == 1 and str(folder.resolve()) in settings.load().model_dirs
    assert client.call(Method.MODELS_ADD_FOLDER, {"path": str(folder)})["added"] is False  # once only
    assert any(m["path"] == str(folder / "copy.Q4_1.gguf") for m in client.call(Method.MODELS_LIST)["models"])
    with pytest.raises(RuntimeFailure, match="not a folder"):
        client.call(Method.MODELS_ADD_FOLDER, {"path": str(tmp_path / "missing")})


def test_models_in_the_hugging_face_cache_join_the_library_with_their_details(client: InProcessClient, fake_hub: Any) -> None:
    from huggingface_hub import hf_hub_download

    hf_hub_download(REPO, GGUF_NAME, endpoint=fake_hub.url, cache_dir=os.environ["HF_HUB_CACHE"])  # another tool's download
    cached = [m for m in client.call(Method.MODELS_LIST, timeout=60)["models"] if m["source"] == "hf-cache"]
    assert len(cached) == 1 and cached[0]["name"].startswith(REPO) and cached[0]["quantization"] == "Q4_1"
    details = client.call(Method.MODELS_DETAILS, {"model": cached[0]["id"]}, timeout=60)
    assert "<|im_start|>" in details["chat_template"]
    assert details["metadata"]["general.architecture"] == "llama" and details["metadata"]["llama.block_count"] == 30
    assert details["metadata"]["tokenizer.ggml.tokens"] == "[49152 entries]"


def test_import_checks_the_file_and_copies_it_into_the_library(client: InProcessClient, tmp_path: Path, model_path: Path) -> None:
    half = tmp_path / "half.gguf"
    with model_path.open("rb") as src:
        half.write_bytes(src.read(model_path.stat().st_size // 2))
    with pytest.raises(RuntimeFailure) as info:
        client.call(Method.MODELS_IMPORT, {"path": str(half)}, timeout=60)
    assert info.value.kind is ErrorKind.MODEL_INVALID and "truncated" in info.value.message
    assert not (paths().models / "imported").exists() or not list((paths().models / "imported").iterdir())
    result = client.call(Method.MODELS_IMPORT, {"path": str(model_path)}, timeout=120)
    assert Path(result["path"]).stat().st_size == model_path.stat().st_size
    assert result["id"] in [m["id"] for m in client.call(Method.MODELS_LIST, timeout=60)["models"]]
    with pytest.raises(RuntimeFailure):
        client.call(Method.MODELS_IMPORT, {"path": str(model_path)}, timeout=60)  # already there: said, not overwritten


def test_a_cancelled_import_adds_nothing(client: InProcessClient, model_path: Path) -> None:
    _, final = run(client, Method.MODELS_IMPORT, {"path": str(model_path)}, stop_after=1, stop="cancel")
    assert final.event is EventKind.RESULT and final.data["status"] == "cancelled" and "nothing was added" in final.data["message"]
    imported = paths().models / "imported"
    assert not imported.exists() or not list(imported.iterdir())  # neither the model nor its half copy
    assert not any(m["path"].startswith(str(imported)) for m in client.call(Method.MODELS_LIST, timeout=60)["models"])
