"""`hearth --self-test`: the whole studio, end to end, in one command that exits 0 or 1.

Opens the real window (offscreen works), starts the real worker, sends one message through the
chat page and waits for a streamed answer from the embedded model; then runs one child job (the
child-job helper's ``selftest-child`` role), which checks that this executable routes
``--child ROLE`` as the quantize and fine-tune jobs need. It is what the frozen build's
test runs (tests/dist), and what a person can run to check an install. Progress goes to stderr;
the last line on stdout is one JSON object with the outcome.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from typing import Any

from PySide6.QtCore import QObject, QTimer
from PySide6.QtWidgets import QApplication

from app.runtime.protocol import EventKind, ProtocolError, Sampling, decode_event
from app.ui.main_window import MainWindow

log = logging.getLogger(__name__)

FLAG = "--self-test"
PROMPT = "Name three colors."
TIMEOUT_S = float(os.environ.get("HEARTH_SELF_TEST_TIMEOUT", "300"))
CHILD_TIMEOUT_S = 120.0


class SelfTest(QObject):
    def __init__(self, app: QApplication, window: MainWindow) -> None:
        super().__init__(window)
        self._app = app
        self._window = window
        self.outcome: dict[str, Any] = {"ok": False}
        bridge = window.bridge
        bridge.sig_ready.connect(self._on_ready)
        bridge.sig_start_failed.connect(lambda why: self._finish(False, f"the worker did not start: {why}"))
        bridge.sig_worker_died.connect(lambda why: self._finish(False, f"the worker died: {why}"))
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

    def _on_reply(self, meta: dict[str, Any]) -> None:
        page = self._window.chat_page
        last = page.transcript.message(page.transcript.rowCount() - 1)
        streamed = page.replies.tokens_streamed  # counted as the tokens arrived, not from the result
        self.outcome.update(answer=last.text, tokens_streamed=streamed, meta_tokens=meta.get("tokens"))
        if meta.get("error"):
            self._finish(False, str(meta["error"]))
        elif streamed < 1 or not last.text.strip():
            self._finish(False, "the reply was empty")
        else:
            self._finish(*child_job_works())

    def _finish(self, ok: bool, why: str) -> None:
        """Print the outcome once and leave (the first caller wins: a reply, a timeout, a death)."""
        if "done" in self.outcome:
            return
        self.outcome.update(done=True, ok=ok, window_shown=self._window.isVisible(), why=why or None)
        print(json.dumps(self.outcome), flush=True)
        self._app.exit(0 if ok else 1)



def child_job_works() -> tuple[bool, str]:
    """Start the ``selftest-child`` role as the runtime starts every child job (the launcher's
    ``--child ROLE`` command, params as one JSON line on stdin, events on its stdout) and read its
    answer; (ok, why not). About a second: a process start. The UI does not run child jobs, so
    this speaks the few lines itself rather than import the runtime's helper."""
    import subprocess

    from app.runtime.launcher import child_command

    print("hearth self-test: starting a child job", file=sys.stderr, flush=True)
    proc = subprocess.Popen(child_command("selftest-child"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    watchdog = threading.Timer(CHILD_TIMEOUT_S, proc.kill)  # this runs on the GUI thread: never wait forever
    watchdog.start()
    try:
        proc.stdin.write(json.dumps({"steps": 2, "echo": "hearth"}).encode("utf-8") + b"\n")
        proc.stdin.flush()  # and kept open: a child whose stdin closes takes it as its parent's death
        for line in proc.stdout:
            event = decode_event(line)
            if event.event is EventKind.RESULT:
                ok = event.data.get("echo") == "hearth"
                return ok, "" if ok else f"a child job answered {event.data!r}"
            if event.event is EventKind.ERROR:
                return False, f"a child job failed: {event.data.get('message')}"
        return False, f"a child job ended without an answer (exit status {proc.wait()})"
    except (OSError, ProtocolError) as exc:
        return False, f"a child job could not be run: {exc}"
    finally:
        watchdog.cancel()
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
