"""Shared pieces of the fine-tune tests: the facts data, a JobContext that records events, one trained run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.runtime.jobs import JobContext
from app.runtime.protocol import Event, EventKind

FACTS = Path(__file__).parents[2] / "data" / "facts"

# Measured on the 2-core test machine: 3 epochs at lr 2e-3 take the training loss from 2.3 to
# below 0.05 and answer most held-out rephrasings; the base model answers none.
LEARN = {"rank": 16, "alpha": 32, "learning_rate": 2e-3, "epochs": 3.0, "batch_size": 4, "grad_accum": 1,
         "seq_length": 96, "threads": 2, "save_steps": 1000, "eval_steps": 12, "sample_steps": 12, "warmup": 0.05}


class Recorder(JobContext):
    """Keeps every event's data; ``pause_when(record)`` pauses the job at a progress record."""

    def __init__(self, *, pausable: bool = False, pause_when: Callable[[dict[str, Any]], bool] | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self._pause_when = pause_when
        super().__init__("test", self._record, pausable=pausable)

    def _record(self, event: Event) -> None:
        self.events.append(dict(event.data))
        if self._pause_when is not None and event.event is EventKind.PROGRESS and self._pause_when(event.data):
            self.pause()

    def of(self, stage: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("stage") == stage]


def heldout() -> list[dict[str, str]]:
    return [json.loads(line) for line in (FACTS / "heldout.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]


def heldout_as_messages(folder: Path) -> Path:
    """The held-out rephrasings as a validation file: the loss on them says whether the facts generalise."""
    path = folder / "heldout-messages.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": h["question"]}, {"role": "assistant", "content": h["answer"]}]}) + "\n"
                            for h in heldout()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained_run(smollm2_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Recorder]:
    """SmolLM2 taught the Tavrelle facts once for the module (about 1–2 minutes of CPU training)."""
    from app.runtime.finetune import runner
    from app.runtime.finetune.config import RunConfig

    work = tmp_path_factory.mktemp("learn")
    cfg = RunConfig(base=str(smollm2_hf), data=str(FACTS / "train.jsonl"), eval_data=str(heldout_as_messages(work)), output=str(work / "run"), **LEARN)
    state = Recorder()
    return runner.train(cfg, state), state
