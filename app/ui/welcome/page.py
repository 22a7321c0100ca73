"""First run: what this computer has, what Hearth will do with it, and a model ready to chat.

The facts come from the worker (`hardware` and `engine.plan` for the embedded model), so the
page says exactly what the status bar and `hearth plan` will say. It is shown once: the window
marks `Settings.first_run_done` the first time this page is on screen.
"""

from __future__ import annotations

import html
import logging
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QScrollArea, QVBoxLayout, QWidget

from app import settings as settings_module
from app.runtime.protocol import Method
from app.ui.bridge import RuntimeBridge
from app.ui.errors import worded
from app.ui.request import Request

log = logging.getLogger(__name__)

GIB = 2**30
Q4_BYTES_PER_PARAM = 4.85 / 8  # Q4_K_M's average, the variant most people download
COMFORTABLE_TPS = 8.0  # a reading pace: below it, an answer feels slow
MODEL_SHARE = 0.8  # of the usable memory; the rest is KV cache and compute buffers


def hardware_lines(hw: dict[str, Any]) -> list[str]:
    """The detected hardware in a few plain lines."""
    lines = [f"{hw.get('cpu_name') or 'CPU'}: {hw.get('cpu_cores_physical', '?')} cores"
             f" ({hw.get('cpu_cores_logical', '?')} threads)"]
    lines.append(f"Memory: {hw.get('ram_total', 0) / GIB:.1f} GiB, {hw.get('ram_available', 0) / GIB:.1f} GiB free now")
    gpus = hw.get("gpus") or []
    if gpus:
        for gpu in gpus:
            lines.append(f"GPU: {gpu.get('name', 'GPU')}, {gpu.get('vram_total', 0) / GIB:.1f} GiB of video memory")
    else:
        lines.append("No GPU found: models run on the processor")
    if hw.get("disk_free"):
        lines.append(f"Disk: {hw['disk_free'] / GIB:.0f} GiB free for models")
    if hw.get("source") not in (None, "probe"):
        lines.append(f"(planned for the hardware profile {hw['source']!r}, not this computer)")
    return lines


def bigger_model_hint(hw: dict[str, Any], plan: dict[str, Any] | None) -> str:
    """About how big a model this computer runs well: it must fit the memory the planner would
    give it, and (on the CPU, where memory bandwidth sets the pace) still answer at reading speed."""
    memory = ((plan or {}).get("memory") or {}).get("value") or {}
    gpus = hw.get("gpus") or []
    if gpus:
        budget = sum(d.get("budget", 0) for d in memory.get("devices", []) if d.get("device") != "cpu")
        budget = budget or sum(g.get("vram_free", 0) for g in gpus)
        size = budget * MODEL_SHARE
        where = "in video memory"
    else:
        budget = memory.get("ram_budget") or hw.get("ram_available", 0)
        size = budget * MODEL_SHARE
        bandwidth = hw.get("ram_bandwidth")
        if bandwidth:
            size = min(size, bandwidth / COMFORTABLE_TPS)  # each token reads every weight once
        where = "in memory and still answers at reading speed"
    params = size / Q4_BYTES_PER_PARAM / 1e9
    if params < 0.5:
        return "This computer is best with small models like the built-in one."
    shown = f"{params:.0f}" if params >= 10 else f"{params:.1f}"
    return (f"A model of up to about {shown} billion parameters (Q4_K_M, about {size / GIB:.1f} GiB) fits {where}. "
            "The Download tab marks every variant that fits.")


def _card(title: str) -> tuple[QFrame, QVBoxLayout]:
    frame = QFrame()
    frame.setProperty("role", "card")
    layout = QVBoxLayout(frame)
    layout.setContentsMargins(16, 12, 16, 14)
    heading = QLabel(title)
    heading.setStyleSheet("font-weight: bold; font-size: 15px;")
    layout.addWidget(heading)
    return frame, layout


class WelcomePage(QWidget):
    sig_start_chat = Signal()  # "Start chatting"
    sig_download = Signal()  # "Find a bigger model": the Models page's Download tab

    def __init__(self, bridge: RuntimeBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._bridge = bridge
        self._hardware_request: Request | None = None  # the newest requests: an older answer is dropped
        self._plan_request: Request | None = None
        self.hardware: dict[str, Any] | None = None
        self.plan: dict[str, Any] | None = None
        self._marked = False
        self._stale = False  # the worker is up but this page has not asked it yet

        title = QLabel("Welcome to Hearth")
        title.setProperty("role", "title")
        subtitle = QLabel("Chat with, shrink and teach language models on this computer. "
                          "What you type stays here: Hearth sends nothing anywhere.")
        subtitle.setProperty("role", "subtitle")
        subtitle.setWordWrap(True)

        hw_card, hw_layout = _card("Your computer")
        self.hardware_label = QLabel("Looking at this computer…")
        self.hardware_label.setWordWrap(True)
        hw_layout.addWidget(self.hardware_label)
        hw_layout.addStretch(1)  # the cards share a row: text stays at the top of the shorter one

        plan_card, plan_layout = _card("What Hearth will do with it")
        self.plan_label = QLabel("Working out how to run the built-in model…")
        self.plan_label.setWordWrap(True)
        self.plan_label.setTextFormat(Qt.TextFormat.RichText)
        plan_layout.addWidget(self.plan_label)
        plan_layout.addStretch(1)

        ready_card, ready_layout = _card("Ready to chat")
        self.model_label = QLabel("The built-in model, SmolLM2 135M Instruct, is already on this computer: "
                                  "small and quick, good for a first conversation. No download needed.")
        self.model_label.setWordWrap(True)
        self.start_button = QPushButton("Start chatting")
        self.start_button.setProperty("primary", True)
        self.start_button.clicked.connect(self.sig_start_chat)
        ready_layout.addWidget(self.model_label)
        ready_layout.addWidget(self.start_button, 0, Qt.AlignmentFlag.AlignLeft)

        bigger_card, bigger_layout = _card("Want a smarter model?")
        self.bigger_label = QLabel("Hearth will suggest a size once it has looked at this computer.")
        self.bigger_label.setWordWrap(True)
        self.download_button = QPushButton("Find a bigger model that fits")
        self.download_button.clicked.connect(self.sig_download)
        bigger_layout.addWidget(self.bigger_label)
        bigger_layout.addWidget(self.download_button, 0, Qt.AlignmentFlag.AlignLeft)

        body = QWidget()
        column = QVBoxLayout(body)
        column.setContentsMargins(32, 28, 32, 28)
        column.setSpacing(14)
        column.addWidget(title)
        column.addWidget(subtitle)
        row = QHBoxLayout()
        row.setSpacing(14)
        row.addWidget(hw_card, 1)
        row.addWidget(plan_card, 1)
        column.addLayout(row)
        column.addWidget(ready_card)
        column.addWidget(bigger_card)
        column.addStretch(1)
        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll)

        # Asked only while the page is on screen: a plan costs the worker's engine thread a moment.
        bridge.sig_ready.connect(lambda info: self._on_ready())
        bridge.sig_worker_restarted.connect(self._on_ready)

    def refresh(self) -> None:
        """Ask the worker for the hardware and the built-in model's plan."""
        self._hardware_request = self._bridge.run(Method.HARDWARE, replaces=self._hardware_request).on_success(self._on_hardware).on_failure(
            lambda failure: self.hardware_label.setText(f"Hearth could not look at this computer: {worded(failure)}"))
        self._plan_request = self._bridge.run(Method.ENGINE_PLAN, {}, replaces=self._plan_request).on_success(self._on_plan).on_failure(
            lambda failure: self.plan_label.setText(f"Hearth could not plan the built-in model: {worded(failure)}"))

    def _on_ready(self) -> None:
        if self.isVisible():
            self.refresh()
        else:
            self._stale = True

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if self._stale:
            self._stale = False
            self.refresh()
        if not self._marked:  # shown once: the next start opens on the chat
            self._marked = True
            try:
                saved = settings_module.load()
                saved.first_run_done = True
                settings_module.save(saved)
            except OSError as exc:
                log.error("could not record that the welcome was shown", exc_info=exc)

    def _on_hardware(self, result: dict[str, Any]) -> None:
        self.hardware = result
        self.hardware_label.setText("\n".join(hardware_lines(result)))
        self._hint_bigger()

    def _on_plan(self, result: dict[str, Any]) -> None:
        self.plan = result
        self.plan_label.setText(self._plan_text(result))
        self._hint_bigger()

    def _hint_bigger(self) -> None:
        if self.hardware is not None:
            self.bigger_label.setText(bigger_model_hint(self.hardware, (self.plan or {}).get("plan")))

    @staticmethod
    def _plan_text(result: dict[str, Any]) -> str:
        plan = result.get("plan") or {}
        reasons = [plan[key]["reason"] for key in ("gpu_layers", "context_length", "threads")
                   if isinstance(plan.get(key), dict) and plan[key].get("reason")]
        items = "".join(f"<li>{html.escape(r)}</li>" for r in reasons)
        return (f"<p><b>{html.escape(str(result.get('summary', '')))}</b></p>"
                f"<ul style='margin-left: -20px'>{items}</ul>"
                "<p>You never have to set any of this; the status bar shows the plan for every model you load.</p>")
