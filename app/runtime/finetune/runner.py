"""The parent side of a training run: the ``finetune`` child job, its records relayed, stopped by a kill.

The worker never trains in its own process. The child (`app.runtime.finetune.child`, run through
`app.runtime.childjob`) turns the trainer's events into progress records (stage = the event's
kind), so the GUI and the CLI see loss, validation loss, learning rate, tokens/s, time left,
samples and checkpoints as they happen; its stderr goes to the run's ``train.log``.

A cancel or a pause kills the child at once; the checkpoints it finished stay (a half-saved one
has no completion marker and is ignored), and the run ends as `JobStopped` with the run folder and
the newest checkpoint: cancelled, or paused for the service that declares training pausable.
``resume`` continues from the newest checkpoint either way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from app.runtime.childjob import ChildFailed, exit_words, run_child
from app.runtime.finetune.config import RunConfig, last_checkpoint
from app.runtime.jobs import JobContext, JobStopped
from app.runtime.protocol import ErrorKind, JobStatus, RuntimeFailure

log = logging.getLogger(__name__)

ROLE = "finetune"
LOG_FILE = "train.log"


def train(cfg: RunConfig, state: JobContext, *, resume: bool = False, on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run one training to its end and return its result (``finish_reason: "done"``).

    ``on_event`` sees each progress record after it is relayed (tests use it to stop or kill the
    child at a given point). Raises `JobStopped` after a cancel or pause (``run_dir``,
    ``checkpoint`` and ``finish_reason`` kept), `RuntimeFailure` when the run fails.
    """
    if resume and last_checkpoint(cfg.run_dir) is None:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{cfg.run_dir} has no finished checkpoint to resume from; start a new run instead.")
    cfg.save()

    def relay(record: dict[str, Any]) -> None:
        state.progress(**record)
        if on_event is not None:
            on_event(record)

    # Spinning OpenMP threads waste the CPU when the machine is busy: measured 6x more CPU time per
    # step with the default policy on a loaded 2-core machine, the same per step with PASSIVE.
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    try:
        result = run_child(ROLE, {"run_dir": str(cfg.run_dir), "resume": resume}, state, what="the training run",
                           partial=[cfg.run_dir / ".adapter.tmp"], on_progress=relay, stderr_log=cfg.run_dir / LOG_FILE, env=env)
    except JobStopped as stopped:
        checkpoint = last_checkpoint(cfg.run_dir)
        paused = stopped.status is JobStatus.PAUSED
        where = f"resume continues from {checkpoint.name}" if checkpoint else "no checkpoint was finished yet, so a resume starts over"
        raise JobStopped(stopped.status, f"Training {'paused' if paused else 'cancelled'}; {where}.", run_dir=str(cfg.run_dir),
                         checkpoint=str(checkpoint) if checkpoint else None, finish_reason=stopped.status.value) from None
    except ChildFailed as exc:
        checkpoint = last_checkpoint(cfg.run_dir)
        where = f"; resume continues from {checkpoint.name}" if checkpoint else ""
        raise RuntimeFailure(ErrorKind.INTERNAL, f"The training process stopped unexpectedly ({exit_words(exc.exit_code)}){where}. See {cfg.run_dir / LOG_FILE}.",
                             detail=exc.detail) from None
    except RuntimeFailure as exc:
        raise RuntimeFailure(exc.kind, f"Training failed: {exc.message}", detail=exc.detail) from None
    return {"finish_reason": "done", "run_dir": str(cfg.run_dir), **result}

