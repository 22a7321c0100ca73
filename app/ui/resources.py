"""Find Hearth's resources (icons, style sheets) in a venv checkout and in a frozen build.

resources/ sits next to app/ in the source tree, outside the Python package, so package data
cannot carry it. A PyInstaller build copies it to ``<bundle>/resources`` (``sys._MEIPASS``);
a checkout (the editable install `make run` makes) reads it from the repository root.
``HEARTH_RESOURCES`` points elsewhere (a distribution package that installs it under /usr/share).
"""

from __future__ import annotations

import functools
from pathlib import Path

from PySide6.QtGui import QIcon

from app.paths import resource_folders

ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


class ResourcesMissing(FileNotFoundError):
    """resources/ is nowhere Hearth looks: a broken install, said with the places searched."""



@functools.lru_cache(maxsize=1)
def root() -> Path:
    for folder in resource_folders():
        if (folder / "icons" / "hearth.svg").is_file():
            return folder
    raise ResourcesMissing("Hearth's resources folder is missing; looked in: " + ", ".join(str(p) for p in resource_folders()))


def path(relative: str) -> Path:
    """A file under resources/, e.g. ``path("style/hearth.qss")``."""
    return root() / relative


def app_icon() -> QIcon:
    """The application icon: every PNG size (sharp at each) plus the SVG for anything larger."""
    icon = QIcon()
    for size in ICON_SIZES:
        png = path(f"icons/hearth-{size}.png")
        if png.is_file():
            icon.addFile(str(png))
    if icon.isNull():
        icon.addFile(str(path("icons/hearth.svg")))
    return icon


def icon(name: str) -> QIcon:
    """A page or action icon by name (resources/icons/<name>.svg); empty when there is none."""
    svg = path(f"icons/{name}.svg")
    return QIcon(str(svg)) if svg.is_file() else QIcon()
