"""The Models page marks embedding models, and will not open a chat with one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from PySide6.QtCore import Qt

from app.runtime import library
from app.ui.bridge import RuntimeBridge
from app.ui.models.page import COLUMNS, ModelsPage

_spec = importlib.util.spec_from_file_location("encoder_gguf", Path(__file__).parents[1] / "runtime" / "encoder_gguf.py")
assert _spec is not None and _spec.loader is not None
encoder_gguf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(encoder_gguf)
write_encoder_gguf = encoder_gguf.write_encoder_gguf


def test_embedding_models_are_marked_and_not_opened_for_chat(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_encoder_gguf(tmp_path / "bge-small.gguf")
    rows = [m.to_dict() for m in library.scan([tmp_path], hf_cache=False)]  # what models.list sends (less the fit)
    bridge = RuntimeBridge()  # never started: the page only shows rows here
    page = ModelsPage(bridge)
    qtbot.addWidget(page)
    page._on_listed({"models": rows})
    kind = [title for title, _ in COLUMNS].index("Kind")
    shown = {page.table_model.index(r, 0).data(): page.table_model.index(r, kind).data() for r in range(page.table_model.rowCount())}
    assert shown == {library.EMBEDDED_NAME: "Chat", "bge-small": "Embedding"}
    asked: list[str] = []
    page.sig_load_requested.connect(asked.append)
    page.table.selectRow(1)
    qtbot.mouseClick(page.use_button, Qt.MouseButton.LeftButton)
    assert asked == [] and "bge-small is an embedding model" in page.status.text()
    page.table.selectRow(0)
    qtbot.mouseClick(page.use_button, Qt.MouseButton.LeftButton)
    assert asked == [library.EMBEDDED_ID]
