"""Light and dark themes: one style sheet (resources/style/hearth.qss) filled from a palette.

The palette is also given to Qt as a QPalette, so the parts a style sheet does not reach (menus,
scroll bars, tooltips, dialogs Qt draws itself) match. "system" follows the desktop's colour
scheme where Qt can read it (Qt 6.5+), and is light where it cannot (offscreen, old desktops).
"""

from __future__ import annotations

import json
import logging
import re

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication

from app.settings import THEMES
from app.ui import resources

log = logging.getLogger(__name__)

__all__ = ["THEMES", "apply", "resolve", "style_sheet"]

_TOKEN = re.compile(r"@([a-z_]+)@")


def palettes() -> dict[str, dict[str, str]]:
    data: dict[str, dict[str, str]] = json.loads(resources.path("style/palettes.json").read_text(encoding="utf-8"))
    return data


def resolve(theme: str) -> str:
    """"light" or "dark" for a setting of "system", "light" or "dark"."""
    if theme in ("light", "dark"):
        return theme
    app = QGuiApplication.instance()
    if app is not None and isinstance(app, QGuiApplication):
        scheme = app.styleHints().colorScheme()
        if scheme == Qt.ColorScheme.Dark:
            return "dark"
    return "light"


def style_sheet(theme: str) -> str:
    """The style sheet for a resolved theme, every @token@ replaced by its colour."""
    colours = palettes()[resolve(theme)]
    template = resources.path("style/hearth.qss").read_text(encoding="utf-8")

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in colours:
            raise KeyError(f"hearth.qss uses @{name}@, which palettes.json does not define")
        return colours[name]

    return _TOKEN.sub(fill, template)


def qpalette(theme: str) -> QPalette:
    c = {k: QColor(v) for k, v in palettes()[resolve(theme)].items()}
    pal = QPalette()
    roles = {
        QPalette.ColorRole.Window: c["window"],
        QPalette.ColorRole.WindowText: c["text"],
        QPalette.ColorRole.Base: c["base"],
        QPalette.ColorRole.AlternateBase: c["alt_base"],
        QPalette.ColorRole.Text: c["text"],
        QPalette.ColorRole.PlaceholderText: c["muted"],
        QPalette.ColorRole.Button: c["button"],
        QPalette.ColorRole.ButtonText: c["text"],
        QPalette.ColorRole.Highlight: c["accent"],
        QPalette.ColorRole.HighlightedText: c["accent_text"],
        QPalette.ColorRole.ToolTipBase: c["base"],
        QPalette.ColorRole.ToolTipText: c["text"],
        QPalette.ColorRole.Link: c["accent"],
        QPalette.ColorRole.Mid: c["border"],
    }
    for role, colour in roles.items():
        pal.setColor(role, colour)
    pal.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text, c["muted"])
    pal.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.ButtonText, c["muted"])
    pal.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.WindowText, c["muted"])
    return pal


def apply(app: QApplication, theme: str) -> str:
    """Theme the whole application; returns the resolved theme ("light" or "dark").

    A missing or broken style sheet must not stop the studio from opening: it is logged and the
    platform's own look is kept."""
    try:
        sheet, pal = style_sheet(theme), qpalette(theme)
    except (OSError, ValueError, KeyError) as exc:
        log.error("theme %r not applied", theme, exc_info=exc)
        return "light"
    app.setStyle("Fusion")  # the one built-in style that follows a QPalette on every platform
    app.setPalette(pal)
    app.setStyleSheet(sheet)
    return resolve(theme)
