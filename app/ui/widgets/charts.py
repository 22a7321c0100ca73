"""Small charts over pyqtgraph (PySide6-Essentials has no QtCharts): a bar chart for comparing
variants (quantize results) and a line chart for curves (fine-tune loss).

Both are plain QWidgets that take plain numbers; they never see runtime objects. pyqtgraph draws
in the widget's own scene, so the charts work offscreen and in screenshots.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyqtgraph as pg
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

BAR_COLOUR = "#7a8aa0"
HIGHLIGHT_COLOUR = "#e07a2f"  # Hearth's accent: the recommended variant
LINE_COLOURS = ("#e07a2f", "#3f7fbf", "#4a9a5a", "#a04ab0", "#b0a030")


class _Chart(QWidget):
    def __init__(self, title: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.title = QLabel(title, self)
        self.title.setVisible(bool(title))
        layout.addWidget(self.title)
        self.plot = pg.PlotWidget(parent=self, background=None)
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        layout.addWidget(self.plot)

    def set_title(self, title: str) -> None:
        self.title.setText(title)
        self.title.setVisible(bool(title))


class BarChart(_Chart):
    """One bar per label; ``highlight`` (an index) is drawn in the accent colour."""

    def __init__(self, title: str = "", parent: QWidget | None = None) -> None:
        super().__init__(title, parent)
        self.labels: list[str] = []
        self.values: list[float] = []
        self.highlight: int | None = None

    def set_data(self, labels: Sequence[str], values: Sequence[float], *, highlight: int | None = None, unit: str = "") -> None:
        self.labels, self.values, self.highlight = list(labels), [float(v) for v in values], highlight
        self.plot.clear()
        if not self.values:
            return
        brushes = [pg.mkBrush(HIGHLIGHT_COLOUR if i == highlight else BAR_COLOUR) for i in range(len(self.values))]
        bars = pg.BarGraphItem(x=list(range(len(self.values))), height=self.values, width=0.6, brushes=brushes)
        self.plot.addItem(bars)
        self.plot.getAxis("bottom").setTicks([list(enumerate(self.labels))])
        self.plot.setLabel("left", unit)
        self.plot.setXRange(-0.6, len(self.values) - 0.4, padding=0)
        self.plot.setYRange(0, max(self.values) * 1.1 or 1.0, padding=0)


class LineChart(_Chart):
    """Named series of (x, y) points; points can be appended as they arrive (a training loss)."""

    def __init__(self, title: str = "", parent: QWidget | None = None, *, x_label: str = "", y_label: str = "") -> None:
        super().__init__(title, parent)
        self.series: dict[str, tuple[list[float], list[float]]] = {}
        self._curves: dict[str, pg.PlotDataItem] = {}
        self.plot.addLegend()
        self.plot.setLabel("bottom", x_label)
        self.plot.setLabel("left", y_label)

    def set_series(self, name: str, xs: Sequence[float], ys: Sequence[float]) -> None:
        self.series[name] = ([float(x) for x in xs], [float(y) for y in ys])
        self._draw(name)

    def append(self, name: str, x: float, y: float) -> None:
        xs, ys = self.series.setdefault(name, ([], []))
        xs.append(float(x))
        ys.append(float(y))
        self._draw(name)

    def clear(self) -> None:
        self.series.clear()
        for curve in self._curves.values():
            self.plot.removeItem(curve)
        self._curves.clear()

    def _draw(self, name: str) -> None:
        xs, ys = self.series[name]
        curve = self._curves.get(name)
        if curve is None:
            colour = LINE_COLOURS[len(self._curves) % len(LINE_COLOURS)]
            curve = self.plot.plot(xs, ys, pen=pg.mkPen(colour, width=2), name=name)
            self._curves[name] = curve
        else:
            curve.setData(xs, ys)
