"""The ``finetune`` child job (`app.runtime.childjob`, routed by ``hearth --child finetune``).

Params: ``{"run_dir": str, "resume": bool}``; the run's settings are in its folder
(`RunConfig.load`). The trainer's events (`app.runtime.finetune.train`) become progress records
with the event's kind as the stage and its fields kept as they are (step, total_steps, loss,
eval_loss, learning_rate, tokens_per_s, eta_s, text, path...), which is what the wizard and the
CLI read. The result is the run's summary. The helper keeps the real stdout for events, sends
everything printed to stderr (the parent writes it to the run's ``train.log``) and exits when the
parent's end of stdin closes, so a training run never outlives the app.
"""

from __future__ import annotations

import os
from typing import Any

from app.runtime.jobs import JobContext
from app.runtime.protocol import ErrorKind, RuntimeFailure

_RECORD_FIELDS = ("stage", "done", "total", "unit", "fraction", "eta_s", "message")


def train_entry(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Train the run in ``params["run_dir"]`` (from its newest checkpoint with ``resume``)."""
    run_dir = params.get("run_dir")
    if not isinstance(run_dir, str):
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "a fine-tune child needs a 'run_dir' string")
    # Before torch is imported: OpenMP reads these once (see runner.train for why PASSIVE).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ctx.progress("loading", message="Loading the base model and the data")

    from app.runtime.finetune.config import RunConfig
    from app.runtime.finetune.train import run

    def emit(event: dict[str, Any]) -> None:
        report(ctx, event)

    result = run(RunConfig.load(run_dir), emit, resume=bool(params.get("resume")))
    return {k: v for k, v in result.items() if k != "kind"}


def report(ctx: JobContext, event: dict[str, Any]) -> None:
    """One trainer event as a progress record: kind -> stage, a step's place in the run as
    done/total steps, the event's fields kept (those named like the record's own are dropped)."""
    kind = str(event.get("kind", ""))
    extra = {k: v for k, v in event.items() if k != "kind" and k not in _RECORD_FIELDS}
    if kind == "step" and isinstance(event.get("step"), int) and event.get("total_steps"):
        ctx.progress(kind, done=event["step"], total=event["total_steps"], unit="steps", eta_s=event.get("eta_s"), message=words(event), **extra)
    else:
        ctx.progress(kind, message=words(event), **extra)


def words(event: dict[str, Any]) -> str:
    """One line for a training event, as the wizard's status and the CLI show it."""
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
