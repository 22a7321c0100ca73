"""Speculative decoding as a chat setting, through the real window, worker and model: the dialog's
choice is sent with the request, and the status bar shows what the reply's speculation is doing
while it streams (the runtime's "speculation" progress), then what it did."""

from __future__ import annotations

from typing import Any

from app.runtime.protocol import Method
from app.ui.chat.replies import speculation_text
from app.ui.chat.settings_dialog import SPECULATE_KEY, SettingsDialog
from app.ui.main_window import MainWindow
from app.ui.request import Request

# A text to copy: prompt lookup guesses most of the reply, and it is long enough to be still
# streaming after its first verified guess.
TEXT = ("The keeper climbed the stairs at dusk with a brass lantern and a notebook, and wrote down the colour of the sea, "
        "the wind, and the names of the ships that passed the rocks. In winter the fog came in from the north, the bell "
        "rang every minute through the night, and the keeper's daughter counted the rings until morning.")


def test_the_speculation_setting_is_sent_and_the_status_bar_shows_the_live_acceptance(qtbot, window: MainWindow) -> None:  # type: ignore[no-untyped-def]
    page, bridge, sent, shown = window.chat_page, window._bridge, [], []
    page.sig_speculation.connect(shown.append)
    real_run = bridge.run

    def recording(method: Any, params: dict[str, Any] | None = None, **options: Any) -> Request:
        sent.append((str(getattr(method, "value", method)), params or {}))
        return real_run(method, params, **options)

    bridge.run = recording  # type: ignore[method-assign]
    dialog = SettingsDialog(system_prompt="", settings=page.conversation.settings)
    qtbot.addWidget(dialog)
    assert dialog.speculate.currentData() == ""  # the default: the app setting (automatic)
    dialog.speculate.setCurrentIndex(dialog.speculate.findData("lookup"))
    dialog.max_tokens.setValue(120)
    dialog.temperature.setValue(0.0)
    page.apply_settings(settings=dialog.settings())
    assert page.store.conversation(page.conversation.id).settings[SPECULATE_KEY] == "lookup"

    page.send("Copy this text exactly:\n\n" + TEXT)
    label = window.speculation_label
    # The first reply also measures the verify cost. The live numbers show while the reply runs: the
    # end's own numbers come in the same slot that ends the reply, so they cannot pass this.
    qtbot.waitUntil(lambda: "% accepted" in label.text() and page.busy, timeout=240_000)
    assert label.text().startswith("speculation ")
    qtbot.waitUntil(lambda: not page.busy, timeout=240_000)
    [params] = [p for m, p in sent if m == Method.CHAT.value]
    assert params["speculate"] == "lookup"
    assert len(shown) >= 2 and "% accepted" in shown[0]  # live numbers first, then the result's, which stay shown
    assert label.text() == shown[-1] and label.text().startswith("speculation")


def test_the_status_words_for_a_replys_speculation() -> None:
    assert speculation_text(None) == ""
    assert speculation_text({"steps": 0, "drafted": 0, "accepted": 0, "off": "a grammar constrains the reply"}) == "speculation off"
    assert speculation_text({"steps": 4, "drafted": 10, "accepted": 8}) == "speculation 80% accepted · 3.0 tokens/step"
    assert speculation_text({"steps": 0, "drafted": 0, "accepted": 0}) == "speculation: no guesses"
