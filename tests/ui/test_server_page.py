"""The Server page with the real worker: start on a free port, a live request log, stop; a refused start."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.ui.bridge import RuntimeBridge
from app.ui.server import ServerPage


@pytest.fixture
def page(qtbot) -> Iterator[ServerPage]:  # type: ignore[no-untyped-def]
    bridge = RuntimeBridge()
    widget = ServerPage(bridge)
    qtbot.addWidget(widget)
    with qtbot.waitSignal(bridge.sig_ready, timeout=60_000):
        bridge.start()
    yield widget
    bridge.close()


def test_start_see_requests_live_and_stop(qtbot, page: ServerPage) -> None:  # type: ignore[no-untyped-def]
    page.host.setText("127.0.0.1")
    page.port.setValue(0)
    page.key.setText("")
    with qtbot.waitSignal(page.sig_running_changed, timeout=60_000) as started:
        page.toggle.click()
    running, url = started.args
    assert running and url.startswith("http://127.0.0.1:") and url in page.address.text()
    assert not page.host.isEnabled() and page.toggle.text() == "Stop server"

    assert httpx.get(f"{url}/v1/models", timeout=60).status_code == 200
    missing = httpx.post(f"{url}/v1/chat/completions", json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}, timeout=60)
    assert missing.status_code == 404
    qtbot.waitUntil(lambda: page.log_model.rowCount() >= 2, timeout=30_000)
    rows = page.log_model.rows()
    assert [(r["path"], r["status"]) for r in rows[-2:]] == [("/v1/models", 200), ("/v1/chat/completions", 404)]
    assert page.log_model.data(page.log_model.index(page.log_model.rowCount() - 1, 2)) == "404"

    with qtbot.waitSignal(page.sig_running_changed, timeout=30_000) as stopped:
        page.toggle.click()
    assert stopped.args == [False, ""] and page.address.text() == "Stopped."
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=5)


def test_another_address_without_a_key_is_refused_with_the_reason(qtbot, page: ServerPage) -> None:  # type: ignore[no-untyped-def]
    page.host.setText("0.0.0.0")
    page.port.setValue(0)
    page.key.setText("")
    page.toggle.click()
    qtbot.waitUntil(lambda: "without an API key" in page.status.text(), timeout=30_000)
    assert not page.running and page.toggle.isEnabled() and page.toggle.text() == "Start server"
