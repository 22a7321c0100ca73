"""The details pane of the Models page: a model's facts, its GGUF metadata and its chat template."""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtWidgets import QTextBrowser, QWidget

FACTS = (("Architecture", "architecture"), ("Parameters", "parameters"), ("Quantization", "quantization"),
         ("File size", "file_size"), ("Trained context", "context_length"), ("Layers", "n_layers"), ("Source", "source"), ("Path", "path"))


def render_details_html(details: dict[str, Any]) -> str:
    model, meta = details.get("model", {}), details.get("metadata", {})
    rows = "".join(f"<tr><td><b>{label}</b></td><td>{html.escape(str(model.get(key, '')))}</td></tr>" for label, key in FACTS)
    meta_rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in sorted(meta.items()))
    template = details.get("chat_template")
    template_html = f"<pre>{html.escape(template)}</pre>" if template else "<p><i>No chat template in this file: Hearth uses ChatML.</i></p>"
    return (
        f"<h3>{html.escape(str(model.get('name', '')))}</h3><table>{rows}</table>"
        f"<h4>Chat template</h4>{template_html}<h4>GGUF metadata</h4><table>{meta_rows}</table>"
    )


class ModelDetails(QTextBrowser):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setPlaceholderText("Select a model to see its metadata and chat template.")

    def show_details(self, details: dict[str, Any]) -> None:
        self.setHtml(render_details_html(details))
