"""Hub search, listing and downloads, through unmodified huggingface_hub, against tests/runtime/hub_server."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from huggingface_hub import constants
from safetensors.numpy import save_file

from app.runtime import hub, library
from app.runtime.hub import transfer as hub_download
from app.runtime.jobs import JobContext, JobStopped
from app.runtime.planner.profiles import PROFILES
from app.runtime.protocol import ErrorKind, Event, JobStatus, RuntimeFailure

_spec = importlib.util.spec_from_file_location("hub_server", Path(__file__).with_name("hub_server.py"))
assert _spec is not None and _spec.loader is not None
hub_server = importlib.util.module_from_spec(_spec)
sys.modules["hub_server"] = hub_server
_spec.loader.exec_module(hub_server)
FakeHub, HubFile, HubRepo = hub_server.FakeHub, hub_server.HubFile, hub_server.HubRepo

GGUF_REPO = "hearth-test/SmolLM2-135M-Instruct-GGUF"
ST_REPO = "hearth-test/tiny-safetensors"
GATED_REPO = "hearth-test/gated-GGUF"
GGUF_NAME = library.EMBEDDED_FILE
MIB = 1024 * 1024


class State(JobContext):
    """A download's job context that records its progress; ``pause_at`` / ``cancel_at`` ask it to
    stop once the download is that far, as a ``pause`` / ``cancel`` request would."""

    def __init__(self, pause_at: float | None = None, cancel_at: float | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.pause_at, self.cancel_at = pause_at, cancel_at
        super().__init__("test", self._record, pausable=True)

    def _record(self, event: Event) -> None:
        self.events.append(dict(event.data))
        fraction = event.data.get("fraction")
        if event.data.get("stage") != "download" or fraction is None:
            return
        if self.pause_at is not None and fraction >= self.pause_at:
            self.pause()
        if self.cancel_at is not None and fraction >= self.cancel_at:
            self.cancel()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Real files, hashed once: the embedded SmolLM2 GGUF and a small safetensors model."""
    folder = tmp_path_factory.mktemp("hub-src")
    rng = np.random.default_rng(0)
    save_file({"embed.weight": rng.standard_normal((512, 256)).astype(np.float32),
               "lm_head.weight": rng.standard_normal((512, 256)).astype(np.float32)}, str(folder / "model.safetensors"))
    return {
        "gguf": HubFile(GGUF_NAME, library.embedded_model_path()),
        "safetensors": HubFile("model.safetensors", folder / "model.safetensors"),
        "config": HubFile("config.json", b'{"model_type": "llama", "hidden_size": 256}\n', lfs=False),
    }


@pytest.fixture
def fake_hub(files: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    server = FakeHub()
    size = files["gguf"].size
    server.add(HubRepo(GGUF_REPO, [
        files["gguf"],
        HubFile("SmolLM2-135M-Instruct.Q2_K.gguf", b"x", listed_size=int(size * 0.75)),
        HubFile("SmolLM2-135M-Instruct.Q8_0.gguf", b"y", listed_size=int(size * 1.5)),
        HubFile("SmolLM2-135M-Instruct-F16-00001-of-00002.gguf", b"z", listed_size=size),
        HubFile("SmolLM2-135M-Instruct-F16-00002-of-00002.gguf", b"w", listed_size=int(size * 1.8)),
        HubFile("README.md", b"# SmolLM2 GGUF\n", lfs=False),
    ], downloads=900, likes=20, last_modified="2026-03-01T00:00:00.000Z", tags=["gguf", "llama", "text-generation"], library_name="gguf"))
    server.add(HubRepo(ST_REPO, [files["safetensors"], files["config"]], downloads=50, likes=300,
                       last_modified="2026-02-01T00:00:00.000Z", tags=["safetensors", "text-generation"], library_name="transformers"))
    server.add(HubRepo(GATED_REPO, [HubFile("gated.Q4_0.gguf", b"GGUF gated bytes")], downloads=10, likes=5,
                       last_modified="2026-04-01T00:00:00.000Z", tags=["gguf"], library_name="gguf", gated="manual", token="hf_gated_ok"))
    server.add(HubRepo("hearth-test/smol-embedder-GGUF", [], downloads=5000, tags=["gguf"], pipeline_tag="feature-extraction"))
    server.start()
    hub_server.point_huggingface_hub_at(server, tmp_path / "hf-home", monkeypatch)
    yield server
    server.stop()


def test_search_filters_and_sorts(fake_hub: Any) -> None:
    found = hub.search("smol", endpoint=fake_hub.url)
    assert [m["id"] for m in found] == [GGUF_REPO]  # the feature-extraction GGUF is filtered out
    assert found[0]["downloads"] == 900 and found[0]["gguf"]
    (request,) = fake_hub.calls("GET", "/api/models")
    assert request.query == {"search": ["smol"], "filter": ["gguf"], "pipeline_tag": ["text-generation"], "sort": ["downloads"], "limit": ["30"]}

    by = {sort: [m["id"] for m in hub.search("hearth", gguf_only=False, sort=sort, endpoint=fake_hub.url)] for sort in ("downloads", "likes", "updated")}
    assert by["downloads"] == [GGUF_REPO, ST_REPO, GATED_REPO]
    assert by["likes"] == [ST_REPO, GGUF_REPO, GATED_REPO]
    assert by["updated"] == [GATED_REPO, GGUF_REPO, ST_REPO]
    assert fake_hub.calls("GET", "/api/models")[-1].query["sort"] == ["lastModified"]
    with pytest.raises(RuntimeFailure, match="sort must be"):
        hub.search("x", sort="size", endpoint=fake_hub.url)  # type: ignore[arg-type]


def test_list_files_groups_variants_with_fit_badges(fake_hub: Any, files: dict[str, Any]) -> None:
    model = library.read_gguf(library.embedded_model_path(), source="embedded")
    listing = hub.list_files(GGUF_REPO, endpoint=fake_hub.url, model=model, hardware=PROFILES["cpu-16gb"], context=4096)
    assert fake_hub.calls("GET", f"/api/models/{GGUF_REPO}")[0].query == {"blobs": ["true"]}
    by_path = {f["path"]: f for f in listing["files"]}
    assert by_path[GGUF_NAME] == {"path": GGUF_NAME, "size": files["gguf"].size, "sha256": files["gguf"].sha256, "lfs": True}
    assert by_path["README.md"]["sha256"] is None and not by_path["README.md"]["lfs"]
    variants = listing["variants"]
    assert [v["name"] for v in variants] == ["Q2_K", "Q4_1", "Q8_0", "F16"]  # smallest first
    f16 = variants[-1]
    assert f16["parts"] == 2 and f16["complete"] and len(f16["files"]) == 2
    assert f16["size"] == by_path[f16["files"][0]]["size"] + by_path[f16["files"][1]]["size"]
    assert all(v["fit"] == "cpu" for v in variants)  # a 16 GB CPU machine runs every variant of a 135M model
    assert sum(v["recommended"] for v in variants) == 1 and all(v.get("fit_reason") for v in variants if v["recommended"])

    assert hub.group_variants([{"path": "a/m-Q4_K_M-00001-of-00003.gguf", "size": 5}, {"path": "a/mmproj-f16.gguf", "size": 1}]) == [
        {"name": "Q4_K_M", "quantization": "Q4_K_M", "files": ["a/m-Q4_K_M-00001-of-00003.gguf"], "size": 5, "parts": 3, "complete": False}
    ]


def test_download_verifies_and_reports_progress(fake_hub: Any, files: dict[str, Any], tmp_path: Path) -> None:
    state = State()
    for name in ("model.safetensors", "config.json"):  # LFS sha256 and git blob sha1
        path = hub.download(ST_REPO, name, dest_dir=tmp_path / "models", ctx=state, endpoint=fake_hub.url)
        assert path == tmp_path / "models" / name
    assert (tmp_path / "models" / "config.json").read_bytes() == files["config"].source
    assert hashlib.sha256((tmp_path / "models" / "model.safetensors").read_bytes()).hexdigest() == files["safetensors"].sha256
    assert not list((tmp_path / "models" / hub_download.PARTIAL_DIR).iterdir())
    head = fake_hub.calls("HEAD", "/resolve/")[0]
    assert head.path == f"/{ST_REPO}/resolve/main/model.safetensors" and head.headers["accept-encoding"] == "identity"
    assert "hf_hub/" in head.headers["user-agent"]
    assert all("range" not in r.headers for r in fake_hub.calls("GET", "/resolve/"))
    paths_info = fake_hub.calls("POST", "/paths-info/")[0]
    assert paths_info.path == f"/api/models/{ST_REPO}/paths-info/{fake_hub.repos[ST_REPO].sha}"
    done = [e for e in state.events if e["stage"] == "download" and e["filename"] == "model.safetensors"]
    assert done[-1]["done"] == done[-1]["total"] == files["safetensors"].size and done[-1]["unit"] == "bytes"
    assert state.events[-1]["stage"] == "done"


def test_dropped_connection_resumes_with_range(fake_hub: Any, files: dict[str, Any], tmp_path: Path) -> None:
    size = files["gguf"].size
    fake_hub.drop_after[GGUF_NAME] = 25 * MIB + 123
    path = hub.download(GGUF_REPO, GGUF_NAME, dest_dir=tmp_path, ctx=State(), endpoint=fake_hub.url)
    assert path.stat().st_size == size
    first, second = fake_hub.calls("GET", f"/resolve/main/{GGUF_NAME}")
    assert "range" not in first.headers and first.sent == 25 * MIB + 123
    start = int(second.headers["range"].removeprefix("bytes=").removesuffix("-"))
    assert start == 20 * MIB  # http_get writes whole 10 MiB chunks: what was on disk when the connection dropped
    assert second.sent == size - start  # only the missing bytes


def test_paused_download_survives_restart_and_resumes(
    fake_hub: Any, files: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_download, "PROGRESS_INTERVAL", 0.0)  # a progress event per chunk: pause_at is exact
    size = files["gguf"].size
    with pytest.raises(JobStopped) as paused:
        hub.download(GGUF_REPO, GGUF_NAME, dest_dir=tmp_path, ctx=State(pause_at=0.3), endpoint=fake_hub.url)
    assert paused.value.status is JobStatus.PAUSED and "paused at" in paused.value.message
    part = hub.partial_path(tmp_path, GGUF_NAME, files["gguf"].sha256)
    kept = part.stat().st_size
    assert 0.3 * size <= kept < size and not (tmp_path / GGUF_NAME).exists()
    assert paused.value.kept == {"filename": GGUF_NAME, "downloaded": kept, "total": size}

    state = State()  # a new job, as after an app restart: only the partial file carries over
    path = hub.download(GGUF_REPO, GGUF_NAME, dest_dir=tmp_path, ctx=state, endpoint=fake_hub.url)
    resumed = fake_hub.calls("GET", f"/resolve/main/{GGUF_NAME}")[-1]
    assert resumed.headers["range"] == f"bytes={kept}-" and resumed.sent == size - kept
    assert hashlib.sha256(path.read_bytes()).hexdigest() == files["gguf"].sha256 and not part.exists()
    first = next(e for e in state.events if e["stage"] == "download")
    assert first["done"] == kept  # progress starts where the partial file stopped

    with pytest.raises(JobStopped):
        hub.download(GGUF_REPO, GGUF_NAME, dest_dir=tmp_path / "again", ctx=State(pause_at=0.15), endpoint=fake_hub.url)
    assert hub.discard_partial(GGUF_NAME, dest_dir=tmp_path / "again") > 0  # a paused download dropped for good
    assert not hub.partial_path(tmp_path / "again", GGUF_NAME, files["gguf"].sha256).exists()


def test_cancelled_download_removes_its_partial_file(fake_hub: Any, files: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_download, "PROGRESS_INTERVAL", 0.0)
    with pytest.raises(JobStopped) as cancelled:
        hub.download(GGUF_REPO, GGUF_NAME, dest_dir=tmp_path, ctx=State(cancel_at=0.3), endpoint=fake_hub.url)
    assert cancelled.value.status is JobStatus.CANCELLED and "removed" in cancelled.value.message
    assert fake_hub.calls("GET", f"/resolve/main/{GGUF_NAME}")[0].sent > 0  # it had started writing
    assert not hub.partial_path(tmp_path, GGUF_NAME, files["gguf"].sha256).exists() and not (tmp_path / GGUF_NAME).exists()


def test_corrupted_file_is_rejected_and_not_added(fake_hub: Any, tmp_path: Path) -> None:
    fake_hub.corrupt.add(GGUF_NAME)
    with pytest.raises(RuntimeFailure) as failed:
        hub.download(GGUF_REPO, GGUF_NAME, dest_dir=tmp_path, ctx=State(), endpoint=fake_hub.url)
    assert failed.value.kind is ErrorKind.MODEL_INVALID and "corrupted" in failed.value.message
    assert not (tmp_path / GGUF_NAME).exists() and not list((tmp_path / hub_download.PARTIAL_DIR).iterdir())
    assert not [m for m in library.scan([tmp_path]) if m.path.startswith(str(tmp_path))]


def test_stalled_server_is_retried(fake_hub: Any, files: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)  # what HF_HUB_DOWNLOAD_TIMEOUT=1 sets at import
    fake_hub.stall[GGUF_NAME] = (15 * MIB, 30.0)
    path = hub.download(GGUF_REPO, GGUF_NAME, dest_dir=tmp_path, ctx=State(), endpoint=fake_hub.url)
    assert path.stat().st_size == files["gguf"].size
    stalled, retried = fake_hub.calls("GET", f"/resolve/main/{GGUF_NAME}")
    assert stalled.sent == 15 * MIB and retried.headers["range"] == f"bytes={10 * MIB}-"


def test_network_error_before_transfer_is_retried_with_backoff(fake_hub: Any, tmp_path: Path) -> None:
    fake_hub.fail_head = 1
    state = State()
    path = hub.download(ST_REPO, "config.json", dest_dir=tmp_path, ctx=state, endpoint=fake_hub.url, retry_delays=(0.05, 0.05))
    assert path.is_file() and len(fake_hub.calls("HEAD", "/resolve/")) == 2
    assert any(e.get("retry") == 1 for e in state.events)

    fake_hub.fail_head = 5
    with pytest.raises(RuntimeFailure, match="Could not reach the Hugging Face Hub"):
        hub.download(ST_REPO, "config.json", dest_dir=tmp_path / "b", ctx=State(), endpoint=fake_hub.url, retry_delays=(0.05,))


def test_not_enough_disk_space_is_refused_before_download(fake_hub: Any, files: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(hub_download.shutil, "disk_usage", lambda p: real._replace(free=files["gguf"].size // 2))
    with pytest.raises(RuntimeFailure, match="Not enough disk space") as refused:
        hub.download(GGUF_REPO, GGUF_NAME, dest_dir=tmp_path / "models", ctx=State(), endpoint=fake_hub.url)
    assert refused.value.kind is not ErrorKind.INTERNAL
    assert fake_hub.calls("GET", "/resolve/") == [] and not (tmp_path / "models").exists()


def test_gated_repo_needs_the_saved_token(fake_hub: Any, tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure, match="gated") as refused:
        hub.download(GATED_REPO, "gated.Q4_0.gguf", dest_dir=tmp_path, ctx=State(), endpoint=fake_hub.url)
    assert refused.value.kind is ErrorKind.MODEL_NOT_FOUND
    Path(constants.HF_TOKEN_PATH).parent.mkdir(parents=True, exist_ok=True)
    Path(constants.HF_TOKEN_PATH).write_text("hf_gated_ok")  # what `hf auth login` saves
    path = hub.download(GATED_REPO, "gated.Q4_0.gguf", dest_dir=tmp_path, ctx=State(), endpoint=fake_hub.url)
    assert path.read_bytes() == b"GGUF gated bytes"
    assert fake_hub.calls("GET", "/resolve/")[-1].headers["authorization"] == "Bearer hf_gated_ok"
