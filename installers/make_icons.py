"""Render resources/icons/hearth.svg to the PNG sizes desktops and installers ask for.

Run after changing the SVG: ``QT_QPA_PLATFORM=offscreen .venv/bin/python installers/make_icons.py``.
The PNGs are checked in, so a build never needs this step (nor an SVG renderer).
"""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QImage, QPainter
from PySide6.QtSvg import QSvgRenderer

SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
ICONS = Path(__file__).resolve().parents[1] / "resources" / "icons"


def render(svg: Path, size: int, out: Path) -> None:
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    QSvgRenderer(str(svg)).render(painter)
    painter.end()
    if not image.save(str(out)):
        raise OSError(f"could not write {out}")


def main() -> int:
    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841 (QImage needs it)
    for size in SIZES:
        render(ICONS / "hearth.svg", size, ICONS / f"hearth-{size}.png")
    # Windows (PyInstaller's exe icon, Inno Setup) wants .ico, macOS's bundle .icns: Qt's image
    # plugins write both, so the build needs no Pillow.
    render(ICONS / "hearth.svg", 256, ICONS / "hearth.ico")
    render(ICONS / "hearth.svg", 512, ICONS / "hearth.icns")
    print(f"wrote {len(SIZES)} PNGs, hearth.ico and hearth.icns to {ICONS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
