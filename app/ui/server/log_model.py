"""The request log as a table: one row per finished API request, newest last; new rows are appended."""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import QModelIndex

from app.ui.models.hub_models import RowsModel

MAX_ROWS = 1000


def _ms(value: Any) -> str:
    return "" if value is None else f"{float(value):,.0f} ms"


def _tokens(row: dict[str, Any]) -> str:
    prompt, completion = row.get("prompt_tokens"), row.get("completion_tokens")
    return "" if completion is None else f"{prompt} → {completion}"


def _speed(row: dict[str, Any]) -> str:
    tps = row.get("decode_tps")
    return f"{tps:.1f} tok/s" if tps else ""


class RequestLogModel(RowsModel):
    columns = (
        ("Time", lambda r: time.strftime("%H:%M:%S", time.localtime(r.get("time", 0)))),
        ("Request", lambda r: f"{r.get('method', '')} {r.get('path', '')}"),
        ("Status", lambda r: str(r.get("status", ""))),
        ("Model", lambda r: str(r.get("model") or "")),
        ("Tokens in → out", _tokens),
        ("Waited", lambda r: _ms(r.get("queued_ms"))),
        ("First token", lambda r: _ms(r.get("ttft_ms"))),
        ("Total", lambda r: _ms(r.get("total_ms"))),
        ("Speed", _speed),
        ("Client", lambda r: str(r.get("client", ""))),
    )

    def tooltip(self, row: dict[str, Any]) -> str | None:
        return str(row["error"]) if row.get("error") else row.get("finish_reason")

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Add finished requests at the end (one insert for the lot), dropping the oldest past MAX_ROWS."""
        if not rows:
            return
        first = len(self._rows)
        self.beginInsertRows(QModelIndex(), first, first + len(rows) - 1)
        self._rows.extend(rows)
        self.endInsertRows()
        extra = len(self._rows) - MAX_ROWS
        if extra > 0:
            self.beginRemoveRows(QModelIndex(), 0, extra - 1)
            del self._rows[:extra]
            self.endRemoveRows()
