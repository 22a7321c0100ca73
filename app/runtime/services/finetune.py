"""The fine-tune service: inspect data and plan, train (in a child process), export to the library.

- ``finetune.prepare``: the data's validation report, a preview rendered with the base model's chat
  template (with the trained part marked), and the planner's settings with the memory estimate;
  ``settings`` overrides any of them.
- ``finetune.train``: one run, start to end, relaying the child's events as progress; a cancel
  kills the child and keeps its checkpoints; ``resume`` continues a run folder from its newest one.
- ``finetune.export``: adapter / merged / GGUF (converted and quantized, placed in the library).

The base model is a library id, an HF folder or a GGUF file; a GGUF is converted once to an HF
folder (`app.runtime.hf_folder`), since training needs the unquantized weights.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from app.runtime import library
from app.runtime.finetune import collate, data, export, runner
from app.runtime.finetune.config import RunConfig
from app.runtime.hardware import Hardware
from app.runtime.jobs import JobState
from app.runtime.library import ModelInfo
from app.runtime.planner import training
from app.runtime.protocol import ErrorKind, RuntimeFailure

log = logging.getLogger(__name__)

PREVIEW_EXAMPLES = 3
STATS_SAMPLE = 2000  # examples tokenized to size the sequence length (enough for the 95th percentile)
RUN_OPTIONS = {f.name for f in fields(RunConfig)} - {"base", "data", "output", "extra"}


def _str(params: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = params.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'{name}' must be a non-empty string")
    return value.strip()


class FinetuneService:
    def __init__(self, *, models: Callable[[], list[ModelInfo]], hardware: Callable[[], Hardware]) -> None:
        self._models = models
        self._hardware = hardware
        self._busy = threading.Lock()

    # ---- helpers -----------------------------------------------------------------------------

    def base_folder(self, base: str | None, state: JobState | None = None) -> tuple[Path, str]:
        """(HF folder, display name) for a library id, HF folder or GGUF file (converted once)."""
        from app.runtime.hf_folder import hf_folder_for_gguf

        path = Path(base).expanduser() if base else None
        if path is not None and library.is_hf_folder(path):
            return path.resolve(), path.name
        model = library.resolve(base, self._models())
        if model.format != "gguf":
            return Path(model.path), model.name
        if state is not None:
            state.progress("prepare", message=f"Preparing {model.name} for training (a one-time conversion)")
        return hf_folder_for_gguf(model.path), model.name

    def _plan(self, folder: Path, name: str, stats: training.DataStats, overrides: dict[str, Any], hardware: str | None) -> training.TrainingPlan:
        from app.runtime.planner.profiles import load_profile

        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        model = training.TrainModel.from_config(config.get("text_config") or config, name=name)
        hw = load_profile(hardware) if hardware else self._hardware()
        return training.plan_training(model, hw, stats, overrides)

    # ---- methods -----------------------------------------------------------------------------

    def prepare(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        from transformers import AutoTokenizer

        data_path = _str(params, "data")
        on_error = params.get("on_error", "skip")
        folder, name = self.base_folder(_str(params, "base", required=False), state)
        try:
            report = data.read(data_path, on_error="skip")
        except data.DataRejected as exc:
            return {"report": exc.report.to_dict(), "preview": [], "plan": None, "base": str(folder), "ok": False}
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        lengths = sorted(len(collate.encode(tokenizer, e, max_length=1 << 20).input_ids) for e in report.examples[:STATS_SAMPLE])
        stats = _stats(len(report.examples), lengths)
        overrides = {k: v for k, v in dict(params.get("settings") or {}).items() if k in training.SETTINGS}
        made = self._plan(folder, name, stats, overrides, params.get("hardware"))
        return {
            "ok": not (on_error == "stop" and report.issues),
            "base": str(folder),
            "base_name": name,
            "report": report.to_dict(),
            "preview": [preview(tokenizer, e) for e in report.examples[:PREVIEW_EXAMPLES]],
            "stats": {"examples": stats.examples, "max_tokens": stats.max_tokens, "p95_tokens": stats.p95_tokens, "mean_tokens": stats.mean_tokens},
            "plan": made.to_dict(),
        }

    def train(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        if not self._busy.acquire(blocking=False):
            raise RuntimeFailure(ErrorKind.BUSY, "A fine-tune is already running; wait for it or cancel it first.")
        try:
            resume_dir = _str(params, "resume", required=False)
            if resume_dir:
                cfg = RunConfig.load(resume_dir)
                return runner.train(cfg, state, resume=True)
            cfg = self.make_config(params, state)
            return runner.train(cfg, state)
        finally:
            self._busy.release()

    def make_config(self, params: dict[str, Any], state: JobState | None = None) -> RunConfig:
        """The run's settings: the planner's choices, then the person's overrides."""
        from app.paths import paths

        data_path = _str(params, "data")
        settings = dict(params.get("settings") or {})
        unknown = set(settings) - RUN_OPTIONS
        if unknown:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"unknown fine-tune setting(s): {', '.join(sorted(unknown))}")
        on_error = settings.get("on_error", "skip")
        folder, name = self.base_folder(_str(params, "base", required=False), state)
        report = data.read(data_path, on_error=on_error)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        lengths = sorted(len(collate.encode(tokenizer, e, max_length=1 << 20).input_ids) for e in report.examples[:STATS_SAMPLE])
        stats = _stats(len(report.examples), lengths)
        made = self._plan(folder, name, stats, {k: v for k, v in settings.items() if k in training.SETTINGS}, params.get("hardware"))
        output = _str(params, "output", required=False) or str(paths().data / "finetune" / f"{export.slug(name)}-{time.strftime('%Y%m%d-%H%M%S')}")
        values = {**made.settings(), **settings}
        extra = {"memory_estimate": made.memory.value, "plan": made.to_dict()}  # shown next to the measured peak afterwards
        return RunConfig.from_dict({"base": str(folder), "data": str(Path(data_path).resolve()), "output": output, "extra": extra, **values})

    def export(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        run_dir = _str(params, "run_dir")
        cfg = RunConfig.load(run_dir)
        formats = tuple(params.get("formats") or ("adapter",))
        result = export.export(run_dir, base=cfg.base, formats=formats, qtype=str(params.get("qtype") or "Q8_0"),
                               name=_str(params, "name", required=False), state=state)
        if "gguf" in result:
            found = [m for m in self._models() if Path(m.path).resolve() == Path(result["gguf"]).resolve()]
            result["model_id"] = found[0].id if found else None
        return result


def _stats(examples: int, lengths: list[int]) -> training.DataStats:
    """Sizes from the sorted token lengths of (a sample of) the examples."""
    return training.DataStats(examples, lengths[-1], lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))], sum(lengths) // len(lengths))


def preview(tokenizer: Any, example: data.Example) -> dict[str, Any]:
    """One example as the model will see it, split into the parts with and without loss."""
    if example.text is not None:
        text = collate.render(tokenizer, example)
        return {"line": example.line, "text": text, "segments": [{"text": text, "trained": True}]}
    text, spans = collate.assistant_spans(tokenizer, example.messages)
    segments, at = [], 0
    for lo, hi in spans:
        if lo > at:
            segments.append({"text": text[at:lo], "trained": False})
        segments.append({"text": text[lo:hi], "trained": True})
        at = hi
    if at < len(text):
        segments.append({"text": text[at:], "trained": False})
    return {"line": example.line, "text": text, "segments": segments}
