"""The bridge answers a request it could not send through the same signal a real answer uses."""

from __future__ import annotations

from app.runtime.protocol import ErrorKind, Method
from app.ui.bridge import RuntimeBridge


def test_a_request_before_the_worker_runs_fails_through_sig_failed(qtbot) -> None:  # type: ignore[no-untyped-def]
    bridge = RuntimeBridge()  # never started: no worker process
    with qtbot.waitSignal(bridge.sig_failed, timeout=5_000) as failed:
        request_id = bridge.request(Method.ENGINE_STATUS)
    sent_id, kind, message = failed.args
    assert sent_id == request_id and request_id.startswith("unsent-")
    assert kind in {k.value for k in ErrorKind} and message
    bridge.close()
