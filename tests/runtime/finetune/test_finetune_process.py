"""The training child job: a crash keeps the checkpoints, pause resumes from them, cancel kills,
failures come back in words."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

from app.runtime.finetune import runner
from app.runtime.finetune.config import RunConfig, last_checkpoint
from app.runtime.jobs import JobStopped
from app.runtime.protocol import JobStatus, RuntimeFailure

from .conftest import FACTS, Recorder

TINY = {"rank": 4, "alpha": 8, "learning_rate": 1e-3, "epochs": 1.0, "max_steps": 6, "batch_size": 2, "seq_length": 64,
        "threads": 2, "save_steps": 2, "eval_steps": 100, "sample_steps": 100, "validation_fraction": 0.0}



def training_child() -> psutil.Process:
    """The one ``--child finetune`` process among this test's descendants."""
    found = [p for p in psutil.Process().children(recursive=True) if p.cmdline()[-2:] == ["--child", runner.ROLE]]
    assert len(found) == 1, found
    return found[0]


def test_a_killed_child_is_a_crash_that_keeps_its_checkpoint(smollm2_hf: Path, tmp_path: Path) -> None:
    cfg = RunConfig(base=str(smollm2_hf), data=str(FACTS / "train.jsonl"), output=str(tmp_path / "run"), **TINY)
    killed_at: list[int] = []

    def kill_after_first_checkpoint(record: dict[str, Any]) -> None:
        if record["stage"] == "checkpoint" and not killed_at:
            killed_at.append(record["step"])
            os.kill(training_child().pid, signal.SIGKILL)  # a crash, not a polite cancel

    with pytest.raises(RuntimeFailure) as crashed:
        runner.train(cfg, Recorder(), on_event=kill_after_first_checkpoint)
    assert "stopped unexpectedly (killed by SIGKILL)" in crashed.value.message and "resume" in crashed.value.message
    checkpoint = last_checkpoint(cfg.run_dir)
    assert checkpoint is not None and checkpoint.name == f"checkpoint-{killed_at[0]}"
    assert not (cfg.run_dir / "adapter").exists()
    assert "training" in (cfg.run_dir / runner.LOG_FILE).read_text(encoding="utf-8").lower()  # the child's stderr went to the run's log


def test_pause_keeps_the_checkpoint_and_resume_continues_from_it(smollm2_hf: Path, tmp_path: Path) -> None:
    cfg = RunConfig(base=str(smollm2_hf), data=str(FACTS / "train.jsonl"), output=str(tmp_path / "run"), **TINY)
    state = Recorder(pausable=True)
    paused_at: list[int] = []
    pids: list[int] = []

    def pause_after_first_checkpoint(record: dict[str, Any]) -> None:
        if record["stage"] == "checkpoint" and not paused_at:
            paused_at.append(record["step"])
            pids.append(training_child().pid)
            state.pause()

    with pytest.raises(JobStopped) as stopped:
        runner.train(cfg, state, on_event=pause_after_first_checkpoint)
    assert stopped.value.status is JobStatus.PAUSED
    kept = stopped.value.kept
    assert kept["run_dir"] == str(cfg.run_dir) and kept["finish_reason"] == "paused"
    assert kept["checkpoint"] == str(cfg.run_dir / "checkpoints" / f"checkpoint-{paused_at[0]}")
    assert f"checkpoint-{paused_at[0]}" in stopped.value.message
    assert not psutil.pid_exists(pids[0])

    state = Recorder()
    result = runner.train(RunConfig.load(cfg.run_dir), state, resume=True)
    assert result["finish_reason"] == "done" and result["steps"] == 6
    assert state.of("start")[0]["resumed_from"] == paused_at[0]
    resumed_steps = [e["step"] for e in state.of("step")]
    assert resumed_steps[0] == paused_at[0] + 1 and resumed_steps[-1] == 6
    assert [(e["done"], e["total"], e["unit"]) for e in state.of("step")][-1] == (6, 6, "steps")
    assert (cfg.run_dir / "adapter" / "adapter_config.json").is_file()


def test_cancel_kills_the_child_and_keeps_nothing_half_written(smollm2_hf: Path, tmp_path: Path) -> None:
    cfg = RunConfig(base=str(smollm2_hf), data=str(FACTS / "train.jsonl"), output=str(tmp_path / "run"), **{**TINY, "save_steps": 100})
    state = Recorder(pausable=True)
    pids: list[int] = []

    def cancel_on_first_step(record: dict[str, Any]) -> None:
        if record["stage"] == "step" and not pids:
            pids.append(training_child().pid)
            state.cancel()

    with pytest.raises(JobStopped) as stopped:
        runner.train(cfg, state, on_event=cancel_on_first_step)
    assert stopped.value.status is JobStatus.CANCELLED
    assert stopped.value.kept == {"run_dir": str(cfg.run_dir), "checkpoint": None, "finish_reason": "cancelled"}
    assert not (cfg.run_dir / "adapter").exists()
    assert not psutil.pid_exists(pids[0])


def test_a_failure_in_the_child_comes_back_as_a_typed_error(smollm2_hf: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.jsonl"
    junk.write_text("not json\n", encoding="utf-8")
    cfg = RunConfig(base=str(smollm2_hf), data=str(junk), output=str(tmp_path / "run"), **TINY)
    with pytest.raises(RuntimeFailure) as failed:
        runner.train(cfg, Recorder())
    assert failed.value.kind.value == "invalid_params"
    assert "line 1: malformed JSON" in failed.value.message


def test_cancel_during_export_removes_what_it_made(smollm2_hf: Path, tmp_path: Path) -> None:
    from app.runtime.finetune import export

    cfg = RunConfig(base=str(smollm2_hf), data=str(FACTS / "train.jsonl"), output=str(tmp_path / "run"), **{**TINY, "max_steps": 1, "save_steps": 100})
    runner.train(cfg, Recorder())
    # a pause of an export is a cancel: nothing in it can resume
    state = Recorder(pausable=True, pause_when=lambda record: record["stage"] == "convert" and bool(record.get("done")))
    library_dir = tmp_path / "lib"
    with pytest.raises(JobStopped) as stopped:
        export.export(cfg.run_dir, base=str(smollm2_hf), formats=("adapter", "gguf"), name="cancelled", library_dir=library_dir, state=state)
    assert stopped.value.status is JobStatus.CANCELLED and "nothing was added to the library" in stopped.value.message
    assert any(e["stage"] == "merge" for e in state.events)
    assert not (cfg.run_dir / "merged").exists() and not (cfg.run_dir / "gguf").exists()
    assert not library_dir.exists() or not list(library_dir.iterdir())
    assert (cfg.run_dir / "adapter" / "adapter_config.json").is_file()  # the training's own output stays


def test_progress_never_counts_past_the_real_total(smollm2_hf: Path, tmp_path: Path) -> None:
    """30 examples in batches of 2 is 15 batches an epoch; accumulating 2 makes 8 optimizer steps an
    epoch (the last half-filled), so 2 epochs are 16 steps, not the 15 the old estimate said."""
    from app.runtime.finetune.train import planned_steps

    assert planned_steps(15, grad_accum=2, epochs=2.0, max_steps=-1) == 16
    assert planned_steps(21, grad_accum=2, epochs=4.0, max_steps=-1) == 44
    settings = {**TINY, "max_steps": -1, "epochs": 2.0, "grad_accum": 2, "save_steps": 100}
    cfg = RunConfig(base=str(smollm2_hf), data=str(FACTS / "train.jsonl"), output=str(tmp_path / "run"), **settings)
    state = Recorder()
    result = runner.train(cfg, state)
    totals = {e["total_steps"] for e in state.of("start") + state.of("step")}
    steps = [e["step"] for e in state.of("step")]
    assert totals == {16} and steps[-1] == 16 == result["steps"]
    assert all(e["done"] <= e["total"] for e in state.of("step"))
