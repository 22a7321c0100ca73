"""The fine-tune service: inspect data and plan, train (in a child process), export to the library.

- ``finetune.prepare``: the data's validation report, a preview rendered with the base model's chat
  template (with the trained part marked), and the planner's settings with the memory estimate;
  ``settings`` overrides any of them.
- ``finetune.train``: one run, start to end, relaying the child's events as progress; a pause
  stops the child and keeps its checkpoints (``status: "paused"``), a cancel stops it too
  (``status: "cancelled"``); ``resume`` continues a run folder from its newest checkpoint.
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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from app.runtime import library
from app.runtime.finetune import collate, data, export, runner
from app.runtime.finetune.config import RunConfig
from app.runtime.hardware import Hardware
from app.runtime.jobs import JobContext, MethodSpec, Mode
from app.runtime.library import ModelInfo
from app.runtime.outputs import check_output_folder
from app.runtime.planner import training
from app.runtime.protocol import ErrorKind, Method, RuntimeFailure, omitted_when_none

log = logging.getLogger(__name__)

PREVIEW_EXAMPLES = 3
STATS_SAMPLE = 2000  # examples tokenized to size the sequence length (enough for the 95th percentile)
RUN_OPTIONS = {f.name for f in fields(RunConfig)} - {"base", "data", "output", "extra"}


# ---- declared params and results ----------------------------------------------------------------


@dataclass(frozen=True)
class FinetunePrepareParams:
    data: str  # .jsonl, .json or .csv
    base: str | None = None  # a library id, HF folder or GGUF file; None = the default model
    settings: dict[str, Any] = field(default_factory=dict)  # overrides of the planner's settings
    hardware: str | None = None  # plan for a named profile instead of this machine
    output: str | None = None  # the run folder train would use (the CLI sends train's params; unused here)
    on_error: Literal["skip", "stop"] = "skip"


@dataclass(frozen=True)
class FinetunePrepareResult:
    ok: bool
    base: str
    report: dict[str, Any]  # the data's validation report
    preview: list[dict[str, Any]]  # examples as the model sees them, with the trained parts marked
    plan: dict[str, Any] | None  # None when the data was rejected
    base_name: str | None = omitted_when_none()
    stats: dict[str, Any] | None = omitted_when_none()  # examples, max/p95/mean tokens


@dataclass(frozen=True)
class FinetuneTrainParams:
    """A new run (``data`` and the rest), or ``resume``: a run folder to continue."""

    data: str | None = None
    base: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    hardware: str | None = None
    output: str | None = None
    resume: str | None = None


@dataclass(frozen=True)
class FinetuneTrainResult:
    """A finished run: the child's final figures (see app.runtime.finetune.train)."""

    finish_reason: str
    run_dir: str
    adapter: str | None = omitted_when_none()
    steps: int | None = omitted_when_none()
    train_loss: float | None = omitted_when_none()
    eval_loss_first: float | None = omitted_when_none()
    eval_loss: float | None = omitted_when_none()
    eval_history: list[Any] | None = omitted_when_none()
    peak_memory: dict[str, Any] | None = omitted_when_none()
    memory_estimate: dict[str, Any] | None = omitted_when_none()
    seconds: float | None = omitted_when_none()
    checkpoint: str | None = omitted_when_none()  # the newest checkpoint of a run that stopped early
    model_id: str | None = omitted_when_none()  # the finished adapter in the library, over its base: chat with it by this id
    model_name: str | None = omitted_when_none()


@dataclass(frozen=True)
class FinetuneExportParams:
    run_dir: str
    formats: list[str] = field(default_factory=lambda: ["adapter"])  # adapter, merged, gguf
    qtype: str | None = None  # the GGUF type (default Q8_0; F16 keeps 16-bit)
    name: str | None = None  # the exported model's name in the library


@dataclass(frozen=True)
class FinetuneExportResult:
    adapter: str
    merged: str | None = omitted_when_none()
    gguf: str | None = omitted_when_none()
    model_id: str | None = omitted_when_none()  # the GGUF's library id, for "chat with it"


def _str(value: str | None, name: str, *, required: bool = True) -> str | None:
    """A declared string field that must say something when given (or always, when required)."""
    if value is None and not required:
        return None
    if value is None or not value.strip():
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'{name}' must be a non-empty string")
    return value.strip()


class FinetuneService:
    def __init__(self, *, models: Callable[[], list[ModelInfo]], hardware: Callable[[], Hardware]) -> None:
        self._models = models
        self._hardware = hardware
        self._busy = threading.Lock()

    def methods(self) -> list[MethodSpec[Any, Any]]:
        """Training runs in a child process; prepare reads data and a tokenizer, export converts."""
        return [
            MethodSpec(Method.FINETUNE_PREPARE.value, FinetunePrepareParams, FinetunePrepareResult, Mode.BACKGROUND, self.prepare),
            MethodSpec(Method.FINETUNE_TRAIN.value, FinetuneTrainParams, FinetuneTrainResult, Mode.BACKGROUND, self.train, pausable=True,
                       doc="pause keeps the checkpoints (resume continues from the newest); cancel stops the run"),
            MethodSpec(Method.FINETUNE_EXPORT.value, FinetuneExportParams, FinetuneExportResult, Mode.BACKGROUND, self.export),
        ]

    # ---- helpers -----------------------------------------------------------------------------

    def base_folder(self, base: str | None, ctx: JobContext | None = None) -> tuple[Path, str]:
        """(HF folder, display name) for a library id, HF folder or GGUF file (converted once)."""
        from app.runtime.hf_folder import hf_folder_for_gguf

        path = Path(base).expanduser() if base else None
        if path is not None and library.is_hf_folder(path):
            return path.resolve(), path.name
        model = library.resolve(base, self._models())
        if model.format != "gguf":
            return Path(model.path), model.name
        if ctx is not None:
            ctx.progress("prepare", message=f"Preparing {model.name} for training (a one-time conversion)")
        return hf_folder_for_gguf(model.path), model.name

    def _base_ref(self, base: str | None) -> dict[str, str | None]:
        """The base as the library knows it (``base_id``) and its path, kept in the run's settings."""
        path = Path(base).expanduser() if base else None
        if path is not None and library.is_hf_folder(path):
            found = [m for m in self._models() if Path(m.path) == path.resolve()]
            return {"base_id": found[0].id if found else None, "base_path": str(path.resolve())}
        model = library.resolve(base, self._models())
        return {"base_id": model.id, "base_path": model.path}

    def _plan(self, folder: Path, name: str, stats: training.DataStats, overrides: dict[str, Any], hardware: str | None) -> training.TrainingPlan:
        from app.runtime.planner.profiles import load_profile

        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        model = training.TrainModel.from_config(config.get("text_config") or config, name=name)
        hw = load_profile(hardware) if hardware else self._hardware()
        return training.plan_training(model, hw, stats, overrides)

    # ---- methods -----------------------------------------------------------------------------

    def prepare(self, params: FinetunePrepareParams, ctx: JobContext) -> FinetunePrepareResult:
        from transformers import AutoTokenizer

        data_path = _str(params.data, "data")
        folder, name = self.base_folder(_str(params.base, "base", required=False), ctx)
        try:
            report = data.read(data_path, on_error="skip")
        except data.DataRejected as exc:
            return FinetunePrepareResult(ok=False, base=str(folder), report=exc.report.to_dict(), preview=[], plan=None)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        lengths = sorted(len(collate.encode(tokenizer, e, max_length=1 << 20).input_ids) for e in report.examples[:STATS_SAMPLE])
        stats = _stats(len(report.examples), lengths)
        overrides = {k: v for k, v in params.settings.items() if k in training.SETTINGS}
        made = self._plan(folder, name, stats, overrides, params.hardware)
        return FinetunePrepareResult(
            ok=not (params.on_error == "stop" and report.issues),
            base=str(folder),
            base_name=name,
            report=report.to_dict(),
            preview=[preview(tokenizer, e) for e in report.examples[:PREVIEW_EXAMPLES]],
            stats={"examples": stats.examples, "max_tokens": stats.max_tokens, "p95_tokens": stats.p95_tokens, "mean_tokens": stats.mean_tokens},
            plan=made.to_dict(),
        )

    def train(self, params: FinetuneTrainParams, ctx: JobContext) -> FinetuneTrainResult:
        if not self._busy.acquire(blocking=False):
            raise RuntimeFailure(ErrorKind.BUSY, "A fine-tune is already running; wait for it or cancel it first.")
        try:
            resume_dir = _str(params.resume, "resume", required=False)
            if resume_dir:
                result = runner.train(RunConfig.load(resume_dir), ctx, resume=True)
            else:
                result = runner.train(self.make_config(params, ctx), ctx)
        finally:
            self._busy.release()
        if result.get("finish_reason") == "done" and result.get("adapter"):
            result.update(self._register(result))
        return FinetuneTrainResult(**result)

    def _register(self, result: dict[str, Any]) -> dict[str, Any]:
        """A finished run is a model at once: its adapter in the library over its base (a manifest,
        no copy), chat-ready in the torch backend. A base the library lost is logged, not fatal."""
        from app.paths import paths
        from app.runtime import adapters

        try:
            info = adapters.register(result["adapter"], self._models(), library.resolve, models_dir=paths().models, steps=result.get("steps"))
        except RuntimeFailure as exc:
            log.warning("the finished adapter %s was not added to the library: %s", result["adapter"], exc.message)
            return {}
        return {"model_id": info.id, "model_name": info.name}

    def make_config(self, params: FinetuneTrainParams, ctx: JobContext | None = None) -> RunConfig:
        """The run's settings: the planner's choices, then the person's overrides."""
        from app.paths import paths

        data_path = _str(params.data, "data")
        assert data_path is not None
        settings = dict(params.settings)
        unknown = set(settings) - RUN_OPTIONS
        if unknown:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"unknown fine-tune setting(s): {', '.join(sorted(unknown))}")
        on_error = settings.get("on_error", "skip")
        given_output = _str(params.output, "output", required=False)
        if given_output:  # before the base's conversion: a file, another run's folder or an unwritable place in one sentence
            check_output_folder(given_output, what="the training run", new=True)
        folder, name = self.base_folder(_str(params.base, "base", required=False), ctx)
        report = data.read(data_path, on_error=on_error)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        lengths = sorted(len(collate.encode(tokenizer, e, max_length=1 << 20).input_ids) for e in report.examples[:STATS_SAMPLE])
        stats = _stats(len(report.examples), lengths)
        made = self._plan(folder, name, stats, {k: v for k, v in settings.items() if k in training.SETTINGS}, params.hardware)
        output = given_output or str(paths().data / "finetune" / f"{export.slug(name)}-{time.strftime('%Y%m%d-%H%M%S')}")
        values = {**made.settings(), **settings}
        extra = {"memory_estimate": made.memory.value, "plan": made.to_dict(),  # shown next to the measured peak afterwards
                 **self._base_ref(_str(params.base, "base", required=False))}  # the finished adapter is registered over it
        return RunConfig.from_dict({"base": str(folder), "data": str(Path(data_path).resolve()), "output": output, "extra": extra, **values})

    def export(self, params: FinetuneExportParams, ctx: JobContext) -> FinetuneExportResult:
        run_dir = _str(params.run_dir, "run_dir")
        assert run_dir is not None
        cfg = RunConfig.load(run_dir)
        result = export.export(run_dir, base=cfg.base, formats=tuple(params.formats or ("adapter",)), qtype=params.qtype or "Q8_0",
                               name=_str(params.name, "name", required=False), state=ctx)
        if "gguf" in result:
            found = [m for m in self._models() if Path(m.path).resolve() == Path(result["gguf"]).resolve()]
            result["model_id"] = found[0].id if found else None
        return FinetuneExportResult(**result)


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
