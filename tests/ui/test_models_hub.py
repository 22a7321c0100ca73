"""The Models page's Download tab with the real worker against the fake Hub: search, pick, download,
pause, resume, cancel; the model then sits in the library, loads for chat, and can be deleted."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from app.ui.bridge import RuntimeBridge
from app.ui.main_window import MainWindow
from app.ui.models.hub_panel import HubPanel

_spec = importlib.util.spec_from_file_location("hub_fixture", Path(__file__).parents[1] / "runtime" / "hub_fixture.py")
assert _spec is not None and _spec.loader is not None
hub_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hub_fixture)
REPO, GGUF_NAME = hub_fixture.REPO, hub_fixture.GGUF_NAME
MIB = 2**20
STALL = (25 * MIB, 30.0)  # the server stops sending after 25 MiB: a window in which to press Pause or Cancel


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    server = hub_fixture.start(tmp_path, monkeypatch)
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "2")  # the worker notices the stall in 2 s, not 10
    yield server
    server.stop()


@pytest.fixture
def window(qtbot, fake_hub: Any) -> Iterator[MainWindow]:  # type: ignore[no-untyped-def]
    bridge = RuntimeBridge()  # started after the env is set: the worker inherits HF_ENDPOINT and HEARTH_HOME
    win = MainWindow(bridge)
    qtbot.addWidget(win)
    win.show()
    try:
        with qtbot.waitSignal(win.models_page.sig_models_changed, timeout=60_000):
            bridge.start()
        yield win
    finally:
        bridge.close()


def test_search_download_pause_resume_then_chat_and_delete(qtbot, window: MainWindow, fake_hub: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    page = window.models_page
    panel = page.hub_panel
    window.sidebar.setCurrentRow(1)
    page.tabs.setCurrentWidget(panel)

    panel.query.setText("smol")
    panel.sort.setCurrentIndex(panel.sort.findData("likes"))
    qtbot.mouseClick(panel.search_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: panel.results_model.rowCount() == 1, timeout=30_000)
    assert panel.results_model.index(0, 0).data() == REPO
    assert fake_hub.calls("GET", "/api/models")[-1].query["sort"] == ["likes"]

    panel.results.selectRow(0)
    qtbot.waitUntil(lambda: panel.variants_model.rowCount() == 3, timeout=30_000)
    names = [panel.variants_model.index(r, 0).data() for r in range(3)]
    assert names == ["Q2_K", "Q4_1", "Q8_0"]
    assert "recommended" in panel.variants_model.index(1, 2).data() and panel.variants.currentIndex().row() == 1
    assert panel.variants_model.index(1, 1).data().endswith("MB")

    downloads = panel.downloads_model
    partials = Path(os.environ["HEARTH_HOME"]) / "data" / "models" / hub_fixture.REPO_DIR / ".partial"

    # Cancel: the worker stops the download and removes its partial file
    fake_hub.stall[GGUF_NAME] = STALL
    qtbot.mouseClick(panel.download_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: downloads.rowCount() == 1 and (downloads.row(0)["downloaded"] or 0) >= 10 * MIB, timeout=30_000)
    panel.downloads.selectRow(0)
    request = downloads.row(0)["request"]
    qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: downloads.rowCount() == 0 and not list(partials.glob("*.incomplete")), timeout=30_000)
    assert request.status == "cancelled"  # the worker's own stop (a result), not a failure and a discard
    assert "cancelled" in panel.status.text()

    # Pause, then Resume from where it stopped
    fake_hub.stall[GGUF_NAME] = STALL
    qtbot.mouseClick(panel.download_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: downloads.rowCount() == 1 and downloads.row(0)["state"] == "downloading" and downloads.row(0)["downloaded"] >= 10 * MIB, timeout=30_000)
    assert "MB" in downloads.index(0, 2).data() and "%" in downloads.index(0, 2).data()
    panel.downloads.selectRow(0)
    qtbot.mouseClick(panel.pause_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: downloads.row(0)["state"] == "paused", timeout=30_000)
    assert panel.pause_button.text() == "Resume" and "paused at" in downloads.row(0)["message"]
    kept = sum(p.stat().st_size for p in partials.glob("*.incomplete"))
    assert kept >= 10 * MIB  # a pause keeps the partial file

    # A restarted studio lists the paused download again, from the partial file on disk
    restarted = HubPanel(window._bridge)
    qtbot.addWidget(restarted)
    restarted.list_paused()  # what the panel does when the worker says hello
    qtbot.waitUntil(lambda: restarted.downloads_model.rowCount() == 1, timeout=30_000)
    listed = restarted.downloads_model.row(0)
    assert (listed["repo_id"], listed["filename"], listed["state"], listed["downloaded"]) == (REPO, GGUF_NAME, "paused", kept)
    restarted.downloads.selectRow(0)
    assert restarted.pause_button.text() == "Resume" and restarted.pause_button.isEnabled()
    again = panel.list_paused()  # the running panel already shows it: no second row
    qtbot.waitUntil(lambda: not again.running, timeout=30_000)
    assert downloads.rowCount() == 1

    with qtbot.waitSignal(page.sig_models_changed, timeout=60_000):
        qtbot.mouseClick(panel.pause_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: downloads.row(0)["state"] == "done", timeout=60_000)
    ranged = fake_hub.calls("GET", f"/resolve/main/{GGUF_NAME}")[-1]
    assert ranged.headers["range"] == f"bytes={kept}-"  # resumed, not restarted
    target = str(Path(os.environ["HEARTH_HOME"]) / "data" / "models" / hub_fixture.REPO_DIR / GGUF_NAME)
    rows = [page.table_model.model_at(r) for r in range(page.table_model.rowCount())]
    row = next(i for i, m in enumerate(rows) if m["path"] == target)

    # The downloaded model loads for chat
    page.tabs.setCurrentIndex(0)
    page.table.selectRow(row)
    with qtbot.waitSignal(window.sig_engine_status, timeout=120_000, check_params_cb=lambda status: status.get("loaded") is True):
        qtbot.mouseClick(page.use_button, Qt.MouseButton.LeftButton)
    assert window.chat_page.model == rows[row]["id"]

    # Delete, after the confirmation
    window.sidebar.setCurrentRow(1)
    page.table.selectRow(row)
    monkeypatch.setattr(QMessageBox, "question", lambda *args, **kwargs: QMessageBox.StandardButton.Yes)
    with qtbot.waitSignal(page.sig_models_changed, timeout=60_000):
        qtbot.mouseClick(page.delete_button, Qt.MouseButton.LeftButton)
    assert not Path(target).exists()
    assert all(page.table_model.model_at(r)["path"] != target for r in range(page.table_model.rowCount()))
    assert "freed" in page.status.text()


def test_add_folder_and_embedded_model_is_not_deleted(qtbot, window: MainWindow, tmp_path: Path, model_path: Path) -> None:  # type: ignore[no-untyped-def]
    page = window.models_page
    folder = tmp_path / "more models"
    folder.mkdir()
    os.symlink(model_path, folder / "mine.Q4_1.gguf")
    with qtbot.waitSignal(page.sig_models_changed, timeout=60_000):
        page.add_folder(str(folder))
    assert any(page.table_model.model_at(r)["path"] == str(folder / "mine.Q4_1.gguf") for r in range(page.table_model.rowCount()))
    embedded = next(r for r in range(page.table_model.rowCount()) if page.table_model.model_at(r)["source"] == "embedded")
    page.delete(embedded)
    assert "cannot be deleted" in page.status.text()
