"""ReplyRunner: sends one chat request, streams its tokens into one transcript row and the store.

The page asks it to `start` a reply for a message the store already holds as `streaming`; the
runner keeps the request, the timings and the `ReplyRecorder`, and finishes the stored reply as
complete, or interrupted (stopped, worker killed, failed) with its partial text kept.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.chats import ChatStoreError, MessageState
from app.runtime.protocol import ErrorKind, Method, RuntimeFailure
from app.ui.bridge import RuntimeBridge
from app.ui.chat import sources as answer_sources
from app.ui.chat.recorder import ReplyRecorder
from app.ui.errors import worded
from app.ui.request import Request
from app.ui.chat.transcript import ChatMessage, TranscriptModel


log = logging.getLogger(__name__)


class ReplyRunner(QObject):
    sig_busy = Signal(bool)
    sig_hint = Signal(str)  # a line for the page's hint label ("" clears it)
    sig_speed = Signal(float)  # live decode tokens/s
    sig_speculation = Signal(str)  # the reply's speculation in a few words (acceptance rate): live, then the final numbers; "" when none ran
    sig_model_loading = Signal(str)
    sig_model_used = Signal(str)
    sig_planned = Signal(dict)  # the progress record of the plan a load inside the chat chose
    sig_row_changed = Signal(int)  # a row whose height may have changed
    sig_finished = Signal(dict)  # the stored meta of the finished reply (with "context" when known)

    def __init__(self, bridge: RuntimeBridge, transcript: TranscriptModel, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._bridge = bridge
        self._transcript = transcript
        self.recorder = ReplyRecorder(self)
        self.request: Request | None = None
        self.last_params: dict[str, Any] = {}
        self._message_id: int | None = None
        self._store: Any = None  # the ChatStore the reply is recorded in (its sources go there too)
        self.tokens_streamed = 0  # tokens of the current (or last) reply, counted as they arrive
        self._first_token_at = 0.0

    @property
    def busy(self) -> bool:
        return self.request is not None

    def start(self, store: Any, message_id: int, params: dict[str, Any]) -> None:
        """Stream the answer to `params` into the stored `streaming` message `message_id`."""
        self._message_id, self.tokens_streamed, self._first_token_at = message_id, 0, 0.0
        self._store = store
        self.recorder.start(store, message_id)
        self.last_params = params
        self.request = (self._bridge.run(Method.CHAT, params)
                        .on_token(self._on_token).on_progress(self._on_progress)
                        .on_success(self._on_finished).on_stopped(self._on_finished).on_failure(self._on_failed))
        self.sig_busy.emit(True)

    def stop(self) -> None:
        """Ask the worker to stop; the reply finishes as interrupted when it answers."""
        if self.request is not None:
            self.request.cancel()
            self.sig_hint.emit("Stopping…")

    def abandon(self) -> None:
        """Stop now and forget the request (the page is showing another conversation)."""
        if self.request is None:
            return
        self.request.cancel()
        self.request.forget()
        self._end(MessageState.INTERRUPTED, {"finish_reason": "cancelled"}, "interrupted")

    # ---- runtime events -----------------------------------------------------------------------

    def _row(self) -> int:
        return -1 if self._message_id is None else self._transcript.row_of(self._message_id)

    def _on_token(self, text: str) -> None:
        now = time.perf_counter()
        if self.tokens_streamed == 0:
            self._first_token_at = now
            self.sig_hint.emit("")
        self.tokens_streamed += 1
        self.recorder.add(text)
        row = self._row()
        if row >= 0:
            self._transcript.append_text(row, text)
            self.sig_row_changed.emit(row)
        if self.tokens_streamed > 1 and now > self._first_token_at:
            self.sig_speed.emit((self.tokens_streamed - 1) / (now - self._first_token_at))

    def _on_progress(self, data: dict[str, Any]) -> None:
        if data.get("stage") == "speculation":  # the running numbers, a few times a second; the result's replace them
            self.sig_speculation.emit(speculation_text(data.get("speculation")))
            return  # the status bar shows it, not the hint label, which the first token cleared
        if data.get("stage") == "planned":
            self.sig_planned.emit(data)
        if data.get("message"):
            self.sig_hint.emit(str(data["message"]) + ("…" if data.get("stage") == "loading" else ""))
            if data.get("stage") == "loading":
                self.sig_model_loading.emit(str(data["message"]))

    def _on_finished(self, result: dict[str, Any]) -> None:
        """A finished reply, or a stopped one (``status: "cancelled"``, its partial text kept)."""
        usage, timings = result.get("usage") or {}, result.get("timings") or {}
        meta: dict[str, Any] = {"tokens": usage.get("completion_tokens", 0), "tps": timings.get("decode_tps", 0.0),
                                "ttft_ms": timings.get("ttft_ms", 0.0), "finish_reason": result.get("finish_reason")}
        if isinstance(result.get("context"), dict):
            meta["context"] = dict(result["context"], completion_tokens=usage.get("completion_tokens", 0))
        if result.get("model"):
            meta["model"] = str(result["model"])
        if result.get("template"):  # "model", "override" or "fallback" (the model's failed: ChatML)
            meta["template"] = str(result["template"])
        shown = self._keep_sources(result.get("docs"), meta)
        self.sig_speculation.emit(speculation_text(result.get("speculation")))
        cancelled = result.get("finish_reason") == "cancelled"
        self.sig_hint.emit("Stopped." if cancelled else "")
        self._end(MessageState.INTERRUPTED if cancelled else MessageState.COMPLETE, meta,
                  "interrupted" if cancelled else "complete", shown)
        if result.get("model"):
            self.sig_model_used.emit(str(result["model"]))

    def _on_failed(self, failure: RuntimeFailure) -> None:
        died = failure.kind is ErrorKind.WORKER_DIED
        row = self._row()
        self._end(MessageState.INTERRUPTED, {"error": failure.message, "finish_reason": "worker_died" if died else "error"},
                  "interrupted" if died else "failed")
        if not died and row >= 0:  # a death is reported once, by the page's worker-died notice
            self._transcript.append(ChatMessage("notice", worded(failure)))

    def _keep_sources(self, docs: Any, meta: dict[str, Any]) -> dict[str, Any]:
        """Store the passages the reply was given as its "source" parts, and what the meta keeps about
        them; returns the row's stats (the meta plus the sources, shown under the reply)."""
        parts = answer_sources.source_parts(docs)
        if answer_sources.docs_meta(docs):
            meta["docs"] = answer_sources.docs_meta(docs)
        if parts and self._store is not None and self._message_id is not None:
            try:
                self._store.add_parts(self._message_id, parts)
            except ChatStoreError:
                log.exception("could not store the sources of message %s", self._message_id)
        return dict(meta, sources=[data for _, data in parts]) if parts else meta

    def _end(self, state: MessageState, meta: dict[str, Any], shown_state: str, shown: dict[str, Any] | None = None) -> None:
        self.recorder.finish(state, meta)
        row = self._row()
        if row >= 0:
            self._transcript.finish(row, shown_state, (shown or meta) if "tokens" in meta else None)
            self.sig_row_changed.emit(row)
        self.request, self._message_id = None, None
        self.sig_busy.emit(False)
        self.sig_finished.emit(meta)


def speculation_text(spec: Any) -> str:
    """What the status bar says about a reply's speculative decoding: the acceptance rate and tokens
    per verify step, or that it was off (the reason is in the chat settings' tooltip and the log)."""
    if not isinstance(spec, dict):
        return ""
    if spec.get("off"):
        return "speculation off"
    drafted, accepted, steps = int(spec.get("drafted") or 0), int(spec.get("accepted") or 0), int(spec.get("steps") or 0)
    if not drafted or not steps:
        return "speculation: no guesses"
    return f"speculation {accepted / drafted:.0%} accepted · {1 + accepted / steps:.1f} tokens/step"
