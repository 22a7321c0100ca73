"""The chat's "Tools" button: which MCP servers' tools the model may use in this conversation.

The choice is the conversation's (kept in its settings as ``mcp_servers``). The servers come from
the settings, through ``mcp.servers``. A server nobody confirmed yet (one imported from an
mcp.json) is shown with its command first, and runs only after a person says yes; the yes is
kept in the settings, and a changed command is asked about again (`app.runtime.mcp.config.merge`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QFileDialog, QMenu, QMessageBox, QToolButton, QWidget

from app.runtime.protocol import Method
from app.ui.bridge import RuntimeBridge

SETTINGS_KEY = "mcp_servers"  # in a conversation's settings: the names of the servers it uses


def confirm_with_dialog(parent: QWidget, name: str, command: str) -> bool:
    answer = QMessageBox.question(
        parent, "Run this MCP server?",
        f"The MCP server “{name}” runs this on your computer, with your permissions:\n\n{command}\n\n"
        "Run it only if you trust where it came from.",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


def mark_confirmed(name: str) -> None:
    """Keep a person's yes for this server in the settings (GUI-side: the settings' one writer)."""
    from app import settings as settings_module

    saved = settings_module.load()
    saved.mcp_servers = [dict(e, confirmed=True) if e.get("name") == name else e for e in saved.mcp_servers]
    settings_module.save(saved)


class ToolChooser(QToolButton):
    sig_changed = Signal(list)  # the names of the chosen servers
    sig_problem = Signal(str)  # a line for the page's hint (an import that failed, or what it added)

    def __init__(self, bridge: RuntimeBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._bridge = bridge
        self.servers: list[dict[str, Any]] = []  # the `mcp.servers` rows
        self.chosen: list[str] = []
        self.confirm: Callable[[QWidget, str, str], bool] = confirm_with_dialog  # tests answer for the person
        self.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.setAccessibleName("Tools")
        self.setToolTip("Which MCP servers' tools the model may call in this conversation (Settings holds the servers)")
        self.setMenu(QMenu(self))
        self.menu().aboutToShow.connect(self.refresh)
        self._show()

    def refresh(self) -> None:
        """Ask the runtime for the configured servers (and their state) again."""
        self._bridge.run(Method.MCP_SERVERS, owner=self).on_success(self._listed)

    def set_chosen(self, names: list[str]) -> None:
        """The conversation's choice (no signal: nothing changed for it)."""
        self.chosen = list(names)
        self._show()

    def choose(self, name: str, on: bool) -> bool:
        """Turn a server on or off for this conversation; False when the person said no."""
        row = next((s for s in self.servers if s["name"] == name), None)
        if on and row is not None and not row.get("confirmed"):
            if not self.confirm(self, name, str(row.get("display", ""))):
                self._show()
                return False
            mark_confirmed(name)
            row["confirmed"] = True
        self.chosen = [n for n in self.chosen if n != name] + ([name] if on else [])
        self._show()
        self.sig_changed.emit(list(self.chosen))
        return True

    def _listed(self, result: dict[str, Any]) -> None:
        self.servers = list(result.get("servers", []))
        self._show()

    def _show(self) -> None:
        menu = self.menu()
        menu.clear()
        if not self.servers:
            empty = menu.addAction("No MCP servers yet")
            empty.setEnabled(False)
        for server in self.servers:
            name = str(server["name"])
            label = name + ("" if server.get("confirmed") else " (not confirmed yet)")
            if server.get("state") == "stopped" and server.get("message"):
                label += f" — {server['message']}"
            action = QAction(label, menu)
            action.setCheckable(True)
            action.setChecked(name in self.chosen)
            action.setToolTip(str(server.get("display", "")))
            action.toggled.connect(lambda on, n=name: self.choose(n, on))
            menu.addAction(action)
        menu.addSeparator()
        menu.addAction("Import mcp.json…", self._pick_file)
        self.setText(f"Tools: {', '.join(self.chosen)}" if self.chosen else "Tools: off")

    def _pick_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import MCP servers", "", "MCP configuration (*.json);;All files (*)")
        if path:
            self.import_file(path)

    def import_file(self, path: str) -> None:
        """Add the servers of an mcp.json (LM Studio, Cursor, Claude Desktop) to the settings,
        unconfirmed: each command is shown and confirmed when a conversation first turns it on."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, ValueError) as exc:
            self.sig_problem.emit(f"Could not read {path}: {exc}")
            return
        self._bridge.run(Method.MCP_IMPORT, {"text": text}, owner=self).on_success(self._imported).on_failure(
            lambda failure: self.sig_problem.emit(failure.message))

    def _imported(self, result: dict[str, Any]) -> None:
        from app import settings as settings_module

        saved = settings_module.load()
        saved.mcp_servers = list(result["servers"])
        settings_module.save(saved)
        self.sig_problem.emit(f"Imported {len(result['imported'])} MCP server(s): {', '.join(result['imported'])}. "
                              "Turn one on under Tools to see and confirm its command.")
        self.refresh()
