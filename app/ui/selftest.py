"""`hearth --self-test`: the whole studio, end to end, in one command that exits 0 or 1.

Opens the real window (offscreen works), starts the real worker, sends one message through the
chat page and waits for a streamed answer from the embedded model. It is what the frozen build's
test runs (tests/dist), and what a person can run to check an install. Progress goes to stderr;
the last line on stdout is one JSON object with the outcome.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from PySide6.QtCore import QObject, QTimer
from PySide6.QtWidgets import QApplication

from app.runtime.protocol import Sampling
from app.ui.main_window import MainWindow

log = logging.getLogger(__name__)

FLAG = "--self-test"
PROMPT = "Name three colors."
TIMEOUT_S = float(os.environ.get("HEARTH_SELF_TEST_TIMEOUT", "300"))


class SelfTest(QObject):
    def __init__(self, app: QApplication, window: MainWindow) -> None:
        super().__init__(window)
        self._app = app
        self._window = window
        self.tokens = 0
        self.outcome: dict[str, Any] = {"ok": False}
        bridge = window.bridge
        bridge.sig_ready.connect(self._on_ready)
        bridge.sig_start_failed.connect(lambda why: self._finish(False, f"the worker did not start: {why}"))
        bridge.sig_worker_died.connect(lambda why: self._finish(False, f"the worker died: {why}"))
        bridge.sig_token.connect(self._on_token)
        window.chat_page.replies.sig_finished.connect(self._on_reply)
        QTimer.singleShot(int(TIMEOUT_S * 1000), lambda: self._finish(False, f"no answer within {TIMEOUT_S:.0f} s"))

    def _on_ready(self, info: dict[str, Any]) -> None:
        self.outcome["worker_pid"] = info.get("pid")
        print(f"hearth self-test: worker {info.get('pid')} ready; asking the embedded model", file=sys.stderr, flush=True)
        page = self._window.chat_page
        page.new_chat()
        # After new_chat, which reuses an empty conversation with that conversation's settings;
        # the page sends these with the request.
        page.sampling = Sampling(temperature=0.0, max_tokens=24)
        page.send(PROMPT)

    def _on_token(self, request_id: str, text: str) -> None:
        if request_id == self._window.chat_page.replies.request_id:
            self.tokens += 1

    def _on_reply(self, meta: dict[str, Any]) -> None:
        page = self._window.chat_page
        last = page.transcript.message(page.transcript.rowCount() - 1)
        self.outcome.update(answer=last.text, tokens_streamed=self.tokens, meta_tokens=meta.get("tokens"))
        if meta.get("error"):
            self._finish(False, str(meta["error"]))
        elif self.tokens < 1 or not last.text.strip():
            self._finish(False, "the reply was empty")
        else:
            self._finish(True, "")

    def _finish(self, ok: bool, why: str) -> None:
        if "done" in self.outcome:
            return
        self.outcome.update(done=True, ok=ok, window_shown=self._window.isVisible(), why=why or None)
        print(json.dumps(self.outcome), flush=True)
        self._app.exit(0 if ok else 1)
