"""The training child process: a kill resumes from the last checkpoint, cancel kills, failures come back in words."""

from __future__ import annotations

import signal
import os
from pathlib import Path
from typing import Any

import pytest

from app.runtime.finetune import runner
from app.runtime.finetune.config import RunConfig, last_checkpoint
from app.runtime.protocol import RuntimeFailure

from .conftest import FACTS, Recorder

TINY = {"rank": 4, "alpha": 8, "learning_rate": 1e-3, "epochs": 1.0, "max_steps": 6, "batch_size": 2, "seq_length": 64,
        "threads": 2, "save_steps": 2, "eval_steps": 100, "sample_steps": 100, "validation_fraction": 0.0}

pytestmark = pytest.mark.timeout(600)  # CPU training on a busy 2-core machine


def test_kill_mid_run_then_resume_from_the_checkpoint(smollm2_hf: Path, tmp_path: Path) -> None:
    cfg = RunConfig(base=str(smollm2_hf), data=str(FACTS / "train.jsonl"), output=str(tmp_path / "run"), **TINY)
    killed_at: list[int] = []

    def kill_after_first_checkpoint(child: runner.TrainingProcess, event: dict[str, Any]) -> None:
        if event.get("kind") == "checkpoint" and not killed_at:
            killed_at.append(event["step"])
            os.kill(child.pid, signal.SIGKILL)  # a crash, not a polite cancel

    with pytest.raises(RuntimeFailure) as crashed:
        runner.train(cfg, Recorder(), on_event=kill_after_first_checkpoint)
    assert "stopped unexpectedly" in crashed.value.message and "resume" in crashed.value.message
    checkpoint = last_checkpoint(cfg.run_dir)
    assert checkpoint is not None and checkpoint.name == f"checkpoint-{killed_at[0]}"
    assert not (cfg.run_dir / "adapter").exists()

    state = Recorder()
    result = runner.train(RunConfig.load(cfg.run_dir), state, resume=True)
    assert result["finish_reason"] == "done" and result["steps"] == 6
    assert state.of("start")[0]["resumed_from"] == killed_at[0]
    resumed_steps = [e["step"] for e in state.of("step")]
    assert resumed_steps[0] == killed_at[0] + 1 and resumed_steps[-1] == 6
    assert (cfg.run_dir / "adapter" / "adapter_config.json").is_file()


def test_cancel_kills_the_child_and_keeps_nothing_half_written(smollm2_hf: Path, tmp_path: Path) -> None:
    cfg = RunConfig(base=str(smollm2_hf), data=str(FACTS / "train.jsonl"), output=str(tmp_path / "run"), **{**TINY, "save_steps": 100})
    state = Recorder()
    pids: list[int] = []

    def cancel_on_first_step(child: runner.TrainingProcess, event: dict[str, Any]) -> None:
        pids.append(child.pid)
        if event.get("kind") == "step":
            state.cancel()

    result = runner.train(cfg, state, on_event=cancel_on_first_step)
    assert result["finish_reason"] == "cancelled" and result["checkpoint"] is None
    assert not (cfg.run_dir / "adapter").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)


def test_a_failure_in_the_child_comes_back_as_a_typed_error(smollm2_hf: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.jsonl"
    junk.write_text("not json\n", encoding="utf-8")
    cfg = RunConfig(base=str(smollm2_hf), data=str(junk), output=str(tmp_path / "run"), **TINY)
    with pytest.raises(RuntimeFailure) as failed:
        runner.train(cfg, Recorder())
    assert failed.value.kind.value == "invalid_params"
    assert "line 1: malformed JSON" in failed.value.message
