"""The Models page: the library from the real worker, with the planner's verdict per model."""

from __future__ import annotations

from PySide6.QtCore import Qt

from app.ui.bridge import RuntimeBridge
from app.ui.main_window import MainWindow
from app.ui.models.page import COLUMNS


def test_library_table_shows_the_embedded_model_and_its_fit(qtbot) -> None:  # type: ignore[no-untyped-def]
    bridge = RuntimeBridge()
    window = MainWindow(bridge)
    qtbot.addWidget(window)
    window.show()
    try:
        with qtbot.waitSignal(window.models_page.sig_models_changed, timeout=60_000):
            bridge.start()
        table = window.models_page.table_model
        assert table.rowCount() >= 1
        headers = [table.headerData(c, Qt.Orientation.Horizontal) for c in range(table.columnCount())]
        assert headers == [title for title, _ in COLUMNS]
        row = {headers[c]: table.index(0, c).data() for c in range(table.columnCount())}
        assert row["Name"] == "SmolLM2 135M Instruct" and row["Quantization"] == "Q4_1" and row["Source"] == "embedded"
        assert "CPU only" in row["On this machine"] and "ctx" in row["On this machine"]
        window.sidebar.setCurrentRow(1)
        window.models_page.table.selectRow(0)
        with qtbot.waitSignal(window.sig_engine_status, timeout=120_000, check_params_cb=lambda status: status.get("loaded") is True):
            qtbot.mouseClick(window.models_page.use_button, Qt.MouseButton.LeftButton)
        assert window.pages.currentIndex() == 0 and window.chat_page.model == "smollm2-135m-instruct-q4_1"
    finally:
        bridge.close()


def test_details_pane_and_import(qtbot, tmp_path, model_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path / "home"))  # the worker inherits it: imports land here
    bridge = RuntimeBridge()
    window = MainWindow(bridge)
    qtbot.addWidget(window)
    window.show()
    page = window.models_page
    try:
        with qtbot.waitSignal(page.sig_models_changed, timeout=60_000):
            bridge.start()
        before = page.table_model.rowCount()
        page.table.selectRow(0)
        qtbot.waitUntil(lambda: "GGUF metadata" in page.details.toHtml(), timeout=30_000)
        text = page.details.toPlainText()
        assert "llama.block_count" in text and "<|im_start|>" in text
        copy = tmp_path / "my-model.gguf"
        copy.write_bytes(model_path.read_bytes())
        with qtbot.waitSignal(page.sig_models_changed, timeout=120_000):
            page.import_file(str(copy))
        assert page.table_model.rowCount() == before + 1 and "Imported my-model.gguf" in page.status.text()
        junk = tmp_path / "junk.gguf"
        junk.write_bytes(b"not a model")
        page.import_file(str(junk))
        qtbot.waitUntil(lambda: "junk.gguf is not a GGUF model file" in page.status.text(), timeout=30_000)
    finally:
        bridge.close()
