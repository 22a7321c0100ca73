"""Qt table models of the quantize wizard: the library to pick from and the results to compare.

Thin adapters over the plain dicts the worker sends; the recommended result row is drawn in the
accent colour and carries a star.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QBrush, QColor, QFont

from app.ui.models.hub_models import RowsModel, fmt_bytes

Index = QModelIndex | QPersistentModelIndex
HIGHLIGHT = QColor("#f6dcc6")


def _num(value: Any, fmt: str, suffix: str = "") -> str:
    return format(value, fmt) + suffix if isinstance(value, (int, float)) else "–"


def made_with(row: dict[str, Any]) -> str:
    """How a result was made, as the report says: llama.cpp with or without Hearth's importance
    matrix, GPTQ or rounding for the torch schemes; nothing for the source."""
    if row.get("is_source") or "algorithm" not in row:
        return ""
    if row.get("kind") == "torch":
        return "GPTQ" if row.get("algorithm") == "gptq" else "round to nearest"
    return "importance matrix" if row.get("imatrix") else "plain"


class LibraryModel(RowsModel):
    columns = (
        ("Model", lambda r: str(r.get("name", ""))),
        ("Type", lambda r: str(r.get("quantization", ""))),
        ("Parameters", lambda r: f"{r.get('parameters', 0) / 1e6:,.0f} M"),
        ("Size", lambda r: fmt_bytes(r.get("file_size"))),
    )

    def tooltip(self, row: dict[str, Any]) -> str | None:
        return str(row.get("path", "")) or None


class ResultsModel(RowsModel):
    """The source first (when measured), then each result; the recommended one highlighted."""

    columns = (
        ("Variant", lambda r: ("★ " if r.get("recommended") else "") + str(r.get("target", ""))),
        ("Made with", lambda r: made_with(r)),
        ("Size", lambda r: fmt_bytes(r.get("file_size"))),
        ("Perplexity", lambda r: _num(r.get("perplexity"), ".2f")),
        ("Change", lambda r: _num(r.get("ppl_change_pct"), "+.2f", " %")),
        ("KL divergence", lambda r: _num(r.get("kl_mean"), ".4f")),
        ("Same top token", lambda r: _num(r.get("top1_agreement"), ".1%")),
        ("Tokens/s", lambda r: _num(r.get("decode_tps"), ".1f")),
    )

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if index.isValid() and self.row(index.row()).get("recommended"):
            if role == Qt.ItemDataRole.BackgroundRole:
                return QBrush(HIGHLIGHT)
            if role == Qt.ItemDataRole.FontRole:
                font = QFont()
                font.setBold(True)
                return font
        return super().data(index, role)

    def tooltip(self, row: dict[str, Any]) -> str | None:
        return str(row.get("path") or row.get("label") or "") or None

    def recommended_row(self) -> int | None:
        return next((i for i, r in enumerate(self.rows()) if r.get("recommended")), None)


def result_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows a person compares: the measured source (unless it is itself a result), then the results."""
    rows = [dict(r) for r in report.get("results", [])]
    ref = report.get("reference")
    if ref and not any(r.get("path") and r.get("path") == ref.get("path") for r in rows):
        rows.insert(0, {**ref, "target": f"{report['source'].get('file_type', '')} (source)", "is_source": True})
    return rows
