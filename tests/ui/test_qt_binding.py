"""The Qt binding itself: a known-bad PySide6 must never be installed again."""

from __future__ import annotations

import sys

from PySide6.QtCore import QAbstractListModel, QModelIndex, QPersistentModelIndex, QSortFilterProxyModel, Qt


class _Empty(QAbstractListModel):
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 1

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> None:
        return None  # "no data for this role", what every model says for most roles


def test_returning_none_from_data_does_not_drain_none(qtbot) -> None:  # type: ignore[no-untyped-def]
    """PySide6 6.12.0 on Python 3.11 dropped one reference to None per call; the studio then
    aborted with "deallocating None" after enough repaints. Views call data() constantly."""
    model = _Empty()
    proxy = QSortFilterProxyModel()
    proxy.setSourceModel(model)
    before = sys.getrefcount(None)
    for _ in range(500):
        model.index(0).data(Qt.ItemDataRole.UserRole + 7)
        proxy.index(0, 0).data(Qt.ItemDataRole.DecorationRole)
    assert sys.getrefcount(None) >= before - 50  # unrelated code may drop a few; the bug drops 1000
