"""The chat's engine-side settings through the real window, worker and model: the context policy,
the chat-template override (and its fallback notice), and unloading the model when idle."""

from __future__ import annotations

from typing import Any

from app.runtime.protocol import Method, Sampling
from app.ui.chat import generation
from app.ui.chat.settings_dialog import SettingsDialog
from app.ui.chat.template_dialog import FALLBACK_NOTICE
from app.ui.main_window import MainWindow
from app.ui.request import Request

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _record(window: MainWindow) -> list[tuple[str, dict[str, Any]]]:
    """Every request the window sends, as (method, params); the real request still goes out."""
    bridge, sent = window._bridge, []
    real_run = bridge.run

    def recording(method: Any, params: dict[str, Any] | None = None, **options: Any) -> Request:
        sent.append((str(getattr(method, "value", method)), params or {}))
        return real_run(method, params, **options)

    bridge.run = recording  # type: ignore[method-assign]
    return sent


def _send(qtbot, page: Any, text: str) -> None:  # type: ignore[no-untyped-def]
    page.send(text)
    qtbot.waitUntil(lambda: not page.busy, timeout=120_000)


def _chats(sent: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [p for m, p in sent if m == Method.CHAT.value]


def test_the_context_policy_is_a_conversation_setting_sent_with_the_request(qtbot, window: MainWindow) -> None:  # type: ignore[no-untyped-def]
    page, sent = window.chat_page, _record(window)
    dialog = SettingsDialog(system_prompt="", settings=page.conversation.settings)
    qtbot.addWidget(dialog)
    assert dialog.policy.currentText() == "Rolling window: forget the oldest messages"  # the default
    dialog.policy.setCurrentIndex(dialog.policy.findData("truncate_middle"))
    assert dialog.policy.currentText() == "Truncate middle: keep the first message"
    dialog.kv_policy.setCurrentIndex(dialog.kv_policy.findData("sink_window"))  # torch only; llama.cpp ignores it
    dialog.max_tokens.setValue(8)
    dialog.temperature.setValue(0.0)
    page.apply_settings(settings=dialog.settings())
    assert page.store.conversation(page.conversation.id).settings["context_policy"] == "truncate_middle"

    _send(qtbot, page, "Hello!")
    [params] = _chats(sent)
    assert params["context_policy"] == "truncate_middle" and "chat_template" not in params
    assert params["prefs"]["kv_policy"] == "sink_window"
    assert page.transcript.message(1).state == "complete"
    page.new_chat()  # a new chat keeps this one's settings
    assert generation.context_policy_from(page.conversation.settings) == "truncate_middle"


def test_a_template_override_is_viewed_saved_and_used(qtbot, window: MainWindow) -> None:  # type: ignore[no-untyped-def]
    page, sent = window.chat_page, _record(window)
    page.apply_settings(settings=generation.settings_blob(Sampling(temperature=0.0, max_tokens=8)))
    _send(qtbot, page, "Hi.")
    assert page.store.messages(page.conversation.id)[1].meta["template"] == "model"

    page.toolbar.template_button.click()  # the dialog asks the worker for the loaded model's template
    dialog = page.templates.dialog
    assert dialog is not None and dialog.isVisible()
    qtbot.waitUntil(lambda: bool(dialog.model_template.toPlainText()), timeout=30_000)
    assert "im_start" in dialog.model_template.toPlainText() and "template (model)" in dialog.source.text()
    dialog.override.setPlainText(CHATML)
    dialog.accept()
    assert page.chat_template == CHATML
    assert generation.chat_template_from(page.store.conversation(page.conversation.id).settings) == CHATML

    _send(qtbot, page, "Hi again.")
    params = _chats(sent)[-1]
    assert params["chat_template"] == CHATML
    reply = page.store.messages(page.conversation.id)[-1]
    assert reply.meta["template"] == "override" and reply.content

    page.set_chat_template("   ")  # empty: the model's own again
    assert page.chat_template == "" and "chat_template" not in page.request_params(reply.id)

    rows = page.transcript.rowCount()
    page.replies.sig_finished.emit({"template": "fallback"})  # as a reply whose model template failed ends
    assert page.transcript.rowCount() == rows + 1 and page.transcript.message(rows).text == FALLBACK_NOTICE


def test_the_model_is_unloaded_after_an_idle_time(qtbot, window: MainWindow) -> None:  # type: ignore[no-untyped-def]
    page, sent = window.chat_page, _record(window)
    assert page.idle.minutes == 0 and not page.idle.timer.isActive()  # off by default
    try:
        page.set_idle_unload(5)
        assert generation.idle_unload_minutes() == 5  # kept in the config folder's presets file
        dialog = SettingsDialog(system_prompt="", settings=page.conversation.settings)
        qtbot.addWidget(dialog)
        assert dialog.idle_minutes() == 5 and "Pirate" in generation.load_presets()
        page.idle.interval_ms = 60_000  # long enough that it cannot run out during the reply
        page.sampling = Sampling(temperature=0.0, max_tokens=8)
        _send(qtbot, page, "Hello!")
        assert page.idle.timer.isActive() and Method.ENGINE_UNLOAD.value not in [m for m, _ in sent]
        qtbot.waitUntil(lambda: "No model loaded" not in window.model_label.text(), timeout=30_000)

        page.idle.interval_ms = 200
        page.idle.touch()  # as a request does: the countdown starts over, now short
        qtbot.waitUntil(lambda: Method.ENGINE_UNLOAD.value in [m for m, _ in sent], timeout=30_000)
        qtbot.waitUntil(lambda: "No model loaded" in window.model_label.text(), timeout=30_000)
        assert "after 5 minutes" in page.hint.text() and not page.idle.timer.isActive()
    finally:
        page.set_idle_unload(0)
    assert generation.idle_unload_minutes() == 0 and not page.idle.timer.isActive()


def test_a_model_serving_the_api_is_not_idle(qtbot, window: MainWindow) -> None:  # type: ignore[no-untyped-def]
    """An API request uses the model without the chat page knowing: the idle countdown asks the
    engine before it unloads, and waits out the rest while the model serves the API."""
    page = window.chat_page
    page.sampling = Sampling(temperature=0.0, max_tokens=8)
    _send(qtbot, page, "Hello!")  # loads the model
    sent = _record(window)
    finished: list[dict[str, Any]] = []
    try:
        page.set_idle_unload(5)
        page.idle.interval_ms = 300
        api = window._bridge.run(Method.SERVER_GENERATE, {  # what one API request becomes in the worker
            "kind": "chat", "messages": [{"role": "user", "content": "Tell me a long story about a dragon and a knight."}],
            "sampling": {"temperature": 0.0, "max_tokens": 200, "repeat_penalty": 1.1}})
        api.on_success(lambda result: finished.append({"unloads_before": sum(m == Method.ENGINE_UNLOAD.value for m, _ in sent), **result}))
        page.idle.touch()
        qtbot.waitUntil(lambda: bool(finished), timeout=120_000)
        assert finished[0]["usage"]["completion_tokens"] > 20  # long enough for several countdowns
        assert finished[0]["unloads_before"] == 0 and [m for m, _ in sent].count(Method.ENGINE_STATUS.value) >= 1
        qtbot.waitUntil(lambda: Method.ENGINE_UNLOAD.value in [m for m, _ in sent], timeout=30_000)  # idle after it
    finally:
        page.set_idle_unload(0)
