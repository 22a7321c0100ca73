"""The parent side of a training run: start the child, relay its events, kill it on cancel.

The worker never trains in its own process. The child's event lines become ``state.progress``
events (stage = the event's kind), so the GUI and the CLI see loss, validation loss, learning rate,
tokens/s, time left, samples and checkpoints as they happen. A cancel kills the child at once; the
checkpoints it finished stay, and ``resume`` continues from the newest one.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from app.runtime.finetune.config import RunConfig, last_checkpoint
from app.runtime.jobs import JobState
from app.runtime.protocol import ErrorKind, RuntimeFailure

log = logging.getLogger(__name__)

CHILD_FLAG = "--finetune-child"
LOG_FILE = "train.log"


def child_command(run_dir: Path, *, resume: bool) -> list[str]:
    """The child's command line; a frozen build runs its own executable with ``--finetune-child``."""
    tail = [str(run_dir), *(["--resume"] if resume else [])]
    if getattr(sys, "frozen", False):
        return [sys.executable, CHILD_FLAG, *tail]
    return [sys.executable, "-m", "app.runtime.finetune.child", *tail]


class TrainingProcess:
    """One running child: its events as an iterator, ``kill()`` to stop it."""

    def __init__(self, cfg: RunConfig, *, resume: bool = False) -> None:
        cfg.save()
        self.run_dir = cfg.run_dir
        env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), PYTHONUNBUFFERED="1")
        self._log = open(self.run_dir / LOG_FILE, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(child_command(self.run_dir, resume=resume), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log, env=env)
        self.killed = False
        self.last: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self) -> Iterator[dict[str, Any]]:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                log.warning("training child wrote a line that is not an event: %r", raw[:200])
                continue
            self.last = event
            yield event

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.killed = True
            self.proc.kill()

    def wait(self) -> int:
        code = self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return code

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return (self.run_dir / LOG_FILE).read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""


def train(cfg: RunConfig, state: JobState, *, resume: bool = False, on_event: Callable[[TrainingProcess, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run one training to its end (or cancel), relaying events; returns the child's final result."""
    if resume and last_checkpoint(cfg.run_dir) is None:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{cfg.run_dir} has no finished checkpoint to resume from; start a new run instead.")
    child = TrainingProcess(cfg, resume=resume)
    stop = threading.Event()

    def watch_cancel() -> None:
        while not stop.wait(0.2):
            if state.cancelled:
                child.kill()
                return

    watcher = threading.Thread(target=watch_cancel, name="finetune-cancel", daemon=True)
    watcher.start()
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    try:
        for event in child.events():
            kind = event.get("kind", "")
            if kind == "done":
                result = event
            elif kind == "error":
                error = event
            total = event.get("total_steps") or 0
            fraction = min(1.0, event["step"] / total) if total and isinstance(event.get("step"), int) else None
            state.progress(kind, fraction=fraction, message=_words(event), **{k: v for k, v in event.items() if k not in ("kind", "detail", "message", "fraction")})
            if on_event is not None:
                on_event(child, event)
    finally:
        code = child.wait()
        stop.set()
        watcher.join()
    checkpoint = last_checkpoint(cfg.run_dir)
    if state.cancelled or (child.killed and result is None):
        return {"finish_reason": "cancelled", "run_dir": str(cfg.run_dir), "checkpoint": str(checkpoint) if checkpoint else None}
    if result is not None and code == 0:
        return {"finish_reason": "done", "run_dir": str(cfg.run_dir), **{k: v for k, v in result.items() if k != "kind"}}
    if error is not None:
        kind = ErrorKind(error.get("error_kind", "internal")) if error.get("error_kind") in {k.value for k in ErrorKind} else ErrorKind.INTERNAL
        raise RuntimeFailure(kind, f"Training failed: {error.get('message')}", detail=error.get("detail", "") or child.log_tail())
    where = f"; resume continues from {checkpoint.name}" if checkpoint else ""
    raise RuntimeFailure(ErrorKind.INTERNAL, f"The training process stopped unexpectedly (exit code {code}){where}. See {cfg.run_dir / LOG_FILE}.", detail=child.log_tail())


def _words(event: dict[str, Any]) -> str:
    kind = event.get("kind")
    if kind == "step":
        eta = event.get("eta_s") or 0
        return f"step {event['step']}/{event['total_steps']} · loss {event['loss']:.3f} · about {int(eta // 60)}:{int(eta % 60):02d} left"
    if kind == "eval":
        return f"validation loss {event['eval_loss']:.3f} at step {event['step']}"
    if kind == "sample":
        return f"sample at step {event['step']}: {event['text'][:80]}"
    if kind == "checkpoint":
        return f"checkpoint saved at step {event['step']}"
    if kind == "start":
        resumed = f", resuming from step {event['resumed_from']}" if event.get("resumed_from") else ""
        return f"training {event['train_examples']} examples for {event['total_steps']} steps{resumed}"
    if kind == "done":
        return "training finished"
    return str(event.get("message", kind))
