"""Shared by the quantize tests (runtime, CLI and wizard); not a test module.

Loaded by path (the test folders are not packages) and kept in ``sys.modules`` so that the whole
pipeline on SmolLM2 runs once per session, whichever test needs it first; the cancel, importance
matrix, CLI and wizard tests start from its F16 output.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from app.runtime.jobs import JobContext
from app.runtime.protocol import Event, EventKind

_RUN: dict[str, Any] = {}
_LOCK = threading.Lock()
EVAL_TOKENS = 800  # two windows of 512: enough for a stable ranking, cheap enough for every test run
CALIBRATION_CHUNKS = 1  # 512 tokens of calibration text: the wiring is the same as with the default 8


def pipeline_run(smollm2_hf: Path) -> tuple[dict[str, Any], Path, Recorder]:
    """The whole pipeline once per session: SmolLM2's HF folder -> F16 GGUF -> Q8_0 and Q4_K_M (with
    an importance matrix), measured against F16. Its results are read-only for the tests that share them."""
    with _LOCK:
        if "report" not in _RUN:
            from app.runtime.quantize import pipeline

            out = Path(tempfile.mkdtemp(prefix="hearth-quantized-"))
            atexit.register(shutil.rmtree, out, True)  # 500 MB of models: gone with the session
            state = Recorder()
            # imatrix auto on one calibration chunk: Q4_K_M gets Hearth's importance matrix, cheaply
            report = pipeline.run(smollm2_hf, ["F16", "Q8_0", "Q4_K_M"], output_dir=out, evaluate=True, state=state, eval_tokens=EVAL_TOKENS,
                                  imatrix="auto", calibration_chunks=CALIBRATION_CHUNKS)
            _RUN.update(report=report, out=out, state=state)
        return _RUN["report"], _RUN["out"], _RUN["state"]


def f16_gguf(smollm2_hf: Path) -> Path:
    """SmolLM2 as an F16 GGUF, the pipeline run's own F16 output (read-only: copy it before changing it)."""
    report, _, _ = pipeline_run(smollm2_hf)
    return Path(next(r["path"] for r in report["results"] if r["target"] == "F16"))


class Recorder(JobContext):
    """A job context that keeps every progress record and log line, and can cancel (or pause)
    itself when a record matches a condition."""

    def __init__(self, cancel_when: Any = None, *, pause: bool = False) -> None:
        self.events: list[dict[str, Any]] = []
        self.logs: list[str] = []
        self._cancel_when = cancel_when
        self._pause = pause
        super().__init__("test", self._record)

    def _record(self, event: Event) -> None:
        if event.event is EventKind.LOG:
            self.logs.append(str(event.data["message"]))
        elif event.event is EventKind.PROGRESS:
            record = dict(event.data)
            self.events.append(record)
            if self._cancel_when is not None and self._cancel_when(record):
                self.pause() if self._pause else self.cancel()
