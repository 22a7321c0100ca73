"""Qt table models for the Download tab: Hub search results, a repository's variants, downloads.

Each is a thin QAbstractTableModel over plain dicts from the worker; a download's progress
updates touch one row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt

Index = QModelIndex | QPersistentModelIndex
Column = tuple[str, Callable[[dict[str, Any]], str]]


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return ""
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


class RowsModel(QAbstractTableModel):
    """Rows of dicts shown through a column table of (title, formatter)."""

    columns: tuple[Column, ...] = ()

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._rows: list[dict[str, Any]] = []

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.columns)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row = self._rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return self.columns[index.column()][1](row)
        if role == Qt.ItemDataRole.ToolTipRole:
            return self.tooltip(row)
        if role == Qt.ItemDataRole.UserRole:
            return row
        return None

    def tooltip(self, row: dict[str, Any]) -> str | None:
        return None

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.columns[section][0]
        return None

    def set_rows(self, rows: list[dict[str, Any]]) -> None:
        self.beginResetModel()
        self._rows = list(rows)
        self.endResetModel()

    def row(self, i: int) -> dict[str, Any]:
        return self._rows[i]

    def rows(self) -> list[dict[str, Any]]:
        return list(self._rows)


class SearchResultsModel(RowsModel):
    columns = (
        ("Repository", lambda r: str(r["id"]) + (" (gated)" if r.get("gated") else "")),
        ("Downloads", lambda r: f"{r.get('downloads', 0):,}"),
        ("Likes", lambda r: f"{r.get('likes', 0):,}"),
        ("Updated", lambda r: str(r.get("last_modified") or "")[:10]),
    )


class VariantsModel(RowsModel):
    columns = (
        ("Variant", lambda r: str(r["name"])),
        ("Size", lambda r: fmt_bytes(r["size"])),
        ("On this machine", lambda r: str(r.get("fit_text", ""))),
        ("Here", lambda r: "downloaded" if r.get("downloaded") else f"paused at {fmt_bytes(r['partial_bytes'])}" if r.get("partial_bytes") else ""),
    )

    def tooltip(self, row: dict[str, Any]) -> str | None:
        return str(row.get("fit_reason") or "") or None


def _progress(r: dict[str, Any]) -> str:
    total = r.get("total") or 0
    done = r.get("downloaded") or 0
    share = f" ({done / total:.0%})" if total else ""
    return f"{fmt_bytes(done)} of {fmt_bytes(total)}{share}"


class DownloadsModel(RowsModel):
    """One row per variant being downloaded: state, bytes, speed, ETA."""

    columns = (
        ("Model", lambda r: f"{r['repo_id']} · {r['name']}"),
        ("State", lambda r: str(r["state"])),
        ("Progress", _progress),
        ("Speed", lambda r: f"{fmt_bytes(r['speed'])}/s" if r.get("speed") and r["state"] == "downloading" else ""),
        ("ETA", lambda r: fmt_eta(r.get("eta")) if r["state"] == "downloading" else ""),
    )

    def tooltip(self, row: dict[str, Any]) -> str | None:
        return str(row.get("message") or "") or None

    def add(self, row: dict[str, Any]) -> int:
        self.beginInsertRows(QModelIndex(), len(self._rows), len(self._rows))
        self._rows.append(row)
        self.endInsertRows()
        return len(self._rows) - 1

    def find(self, key: str, value: Any) -> int:
        return next((i for i, r in enumerate(self._rows) if r.get(key) == value), -1)

    def update(self, i: int, **changes: Any) -> None:
        self._rows[i].update(changes)
        self.dataChanged.emit(self.index(i, 0), self.index(i, len(self.columns) - 1))

    def remove(self, i: int) -> None:
        self.beginRemoveRows(QModelIndex(), i, i)
        del self._rows[i]
        self.endRemoveRows()
