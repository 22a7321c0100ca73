"""One fine-tuning run's settings: what the planner chose plus what the person pinned, as plain data.

The run folder holds ``run.json`` (this object), ``checkpoints/`` (the trainer's, each finished one
marked complete), ``adapter/`` (the final LoRA adapter) and ``train.log`` (the child's stderr). A
resumed run reads ``run.json`` back, so a crash or kill loses at most the steps since the last
checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from app.runtime.protocol import ErrorKind, RuntimeFailure

RUN_FILE = "run.json"
COMPLETE = "hearth-complete"  # written into a checkpoint folder once the trainer finished saving it


@dataclass
class RunConfig:
    base: str  # an HF folder (after a GGUF was converted)
    data: str
    output: str
    eval_data: str | None = None  # a separate validation file; else a split of ``data``
    validation_fraction: float = 0.1
    on_error: str = "skip"
    device: str = "cpu"
    quantize_4bit: bool = False
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    learning_rate: float = 1e-3
    epochs: float = 3.0
    batch_size: int = 4
    grad_accum: int = 1
    seq_length: int = 512
    grad_checkpointing: bool = False
    packing: bool = False
    threads: int = 2
    max_steps: int = -1  # > 0 stops after this many optimizer steps (a quick trial run)
    save_steps: int = 0  # 0 = about five checkpoints over the run
    eval_steps: int = 0  # 0 = about ten evaluations over the run
    sample_steps: int = 0  # 0 = a sample answer at each evaluation
    sample_prompt: str | None = None  # None = the first validation example's question
    prompt_loss: bool = False  # True = train on the prompt tokens too
    seed: int = 0
    scheduler: str = "linear"
    warmup: float = 0.05
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha < 1:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "rank and alpha must be at least 1")
        if not 0 < self.learning_rate < 1:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "the learning rate must be between 0 and 1 (e.g. 2e-4)")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "train for more than 0 epochs or set max_steps")
        if self.batch_size < 1 or self.grad_accum < 1 or self.seq_length < 16 or self.threads < 1:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "batch size, accumulation and threads must be at least 1, the sequence length at least 16")
        if self.device not in ("cpu", "cuda"):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"device must be cpu or cuda, not {self.device!r}")

    @property
    def run_dir(self) -> Path:
        return Path(self.output)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"unknown fine-tune setting(s): {', '.join(sorted(unknown))}")
        return cls(**raw)

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / (RUN_FILE + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        os.replace(tmp, self.run_dir / RUN_FILE)

    @classmethod
    def load(cls, run_dir: str | Path) -> RunConfig:
        path = Path(run_dir) / RUN_FILE
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{path} is not a fine-tune run Hearth can resume: {exc}") from exc


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint the trainer finished writing (a half-written one is ignored)."""
    done = []
    for folder in checkpoints_dir(run_dir).glob("checkpoint-*"):
        step = folder.name.rsplit("-", 1)[-1]
        if step.isdigit() and (folder / COMPLETE).is_file():
            done.append((int(step), folder))
    return max(done)[1] if done else None
