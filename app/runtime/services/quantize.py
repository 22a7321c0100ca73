"""The quantize service: what a model can become (targets with expected sizes and the planner's
pick for this machine), and the run itself, as a cancellable background job.

The run reports progress per step and per tensor (``stage``: step / convert / quantize /
evaluate, with ``step``, ``steps``, ``index``, ``total``, ``eta_s``) and ends with the pipeline's
report; its outputs land in the library's models folder unless ``output_dir`` says otherwise.
A cancel stops it and removes what it made (a half-written GGUF cannot be resumed), ending as a
result with ``status: "cancelled"``; a quantization cannot pause, so a pause is a cancel.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.runtime import library
from app.runtime.hardware import Hardware
from app.runtime.jobs import JobContext, MethodSpec, Mode
from app.runtime.library import ModelInfo
from app.runtime.measurements import MeasurementStore
from app.runtime.protocol import ErrorKind, Method, RuntimeFailure
from app.runtime.quantize import targets as registry

log = logging.getLogger(__name__)


# ---- declared params and results ----------------------------------------------------------------


@dataclass(frozen=True)
class QuantizeTargetsParams:
    model: str  # a library model, a GGUF file or a Hugging Face folder
    imatrix: str = "auto"  # how the run would be made: "auto", "none" or a file (which types are offered, and how)


@dataclass(frozen=True)
class QuantizeTargetsResult:
    source: dict[str, Any]  # path, kind, name, file_type, file_size
    warnings: list[str]
    targets: list[dict[str, Any]]  # every target with expected_size, common, imatrix (made with one) and available
    recommended: dict[str, Any] | None  # name, expected_size, fit, context_length, kl_mean, kl_source, imatrix
    recommended_reason: str


@dataclass(frozen=True)
class QuantizeRunParams:
    model: str
    targets: list[str]  # target names, such as ["Q4_K_M", "Q8_0"]
    output_dir: str | None = None  # default: the library's models folder
    evaluate: bool = True  # measure perplexity, agreement and speed against the source
    eval_tokens: int | None = None
    imatrix: str | None = "auto"  # "auto" (Hearth's, for the types of 4 bits or less), "none", or an importance-matrix file
    calibration: str | None = None  # a text file for the importance matrix and GPTQ (default: the shipped text)
    calibration_chunks: int | None = None  # 512-token chunks of it (default 8 for the imatrix, 16 for GPTQ)
    torch_method: str = "gptq"  # "gptq" or "rtn" for the torch int8/int4 targets


@dataclass(frozen=True)
class QuantizeRunResult:
    """The pipeline's report (see app.runtime.quantize.pipeline)."""

    source: dict[str, Any]
    warnings: list[str]
    reference: dict[str, Any] | None  # the source's own figures, when evaluated
    results: list[dict[str, Any]]  # one row per target: path, file_size, perplexity, kl_mean...
    recommended: str | None
    recommended_reason: str
    seconds: float
    output_dir: str
    imatrix: dict[str, Any] | None = None  # the importance matrix used: path, made (measured / cached / given)


@dataclass(frozen=True)
class QuantizeImatrixParams:
    model: str  # a library model, a GGUF file or a Hugging Face folder
    out: str | None = None  # the file to write (default: the per-model cache `--imatrix auto` reuses)
    data: str | None = None  # a calibration text file (default: the shipped text, never the evaluation's)
    chunks: int | None = None  # 512-token chunks of it (default 8)


@dataclass(frozen=True)
class QuantizeImatrixResult:
    out: str  # the importance matrix, in llama-imatrix's GGUF format
    entries: int  # weights measured
    chunks: int
    tokens: int
    dataset: str
    seconds: float
    cached: bool = False  # the per-model cache already held it: nothing was measured


class QuantizeService:
    def __init__(self, *, models: Callable[[], list[ModelInfo]], hardware: Callable[[], Hardware], default_prefs: Callable[[], dict[str, Any]],
                 measurements: MeasurementStore | None = None) -> None:
        self._models = models
        self._hardware = hardware
        self._default_prefs = default_prefs
        self._running = threading.Lock()  # one quantization at a time: each wants the whole machine
        self._measurements = measurements  # where evaluations keep their figures (default: the user's store)

    @property
    def measurements(self) -> MeasurementStore:
        if self._measurements is None:
            from app.runtime.hardware import this_machine
            from app.runtime.measurements import FileMeasurementStore

            self._measurements = FileMeasurementStore.default(this_machine)
        return self._measurements

    def methods(self) -> list[MethodSpec[Any, Any]]:
        """Quantizing runs child processes for minutes: a job of its own, cancelled by killing them."""
        return [
            MethodSpec(Method.QUANTIZE_TARGETS.value, QuantizeTargetsParams, QuantizeTargetsResult, Mode.BACKGROUND, self.targets),
            MethodSpec(Method.QUANTIZE_RUN.value, QuantizeRunParams, QuantizeRunResult, Mode.BACKGROUND, self.run,
                       doc="cancel removes every partial output"),
            MethodSpec(Method.QUANTIZE_IMATRIX.value, QuantizeImatrixParams, QuantizeImatrixResult, Mode.BACKGROUND, self.imatrix,
                       doc="a child job; cancel kills it and leaves no file"),
        ]

    def _source(self, ref: str) -> Path:
        if not ref.strip():
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'model' must name a library model, a GGUF file or a Hugging Face folder")
        as_path = Path(ref).expanduser()
        if as_path.is_dir():
            return as_path
        return Path(library.resolve(ref, self._models()).path)

    def _context(self) -> int | None:
        value = self._default_prefs().get("context_length")
        return int(value) if isinstance(value, int) and value > 0 else None

    def targets(self, params: QuantizeTargetsParams, ctx: JobContext) -> QuantizeTargetsResult:
        """Every target with its expected size and how it would be made, and the one recommended
        here: the smallest that fits and keeps the mean KL within the limit (this model's own
        evaluation when one has run, else the table by size)."""
        from app.runtime.quantize import safety
        from app.runtime.quantize.pipeline import imatrix_mode, uses_imatrix
        from app.runtime.quantize.recommend import Offer, measured_kl, recommend_here

        source = safety.inspect_source(self._source(params.model))
        mode, _ = imatrix_mode(params.imatrix)
        rows = []
        for t in registry.TARGETS.values():
            row = t.to_dict()
            row["expected_size"] = registry.estimate_size(t, source.tensors)
            row["common"] = t.name in registry.COMMON
            row["imatrix"] = uses_imatrix(t, mode)
            row["available"] = not t.needs_imatrix or row["imatrix"]  # llama.cpp refuses these without one
            rows.append(row)
        recommended: dict[str, Any] | None = None
        reason = ""
        candidates = [r for r in rows if r["kind"] == "gguf" and r["available"] and r["name"] not in ("BF16", "TQ1_0", "TQ2_0", "MXFP4_MOE")]
        info = source.info or _info_from(source)
        if info is not None:
            evaluation = measured_kl(self.measurements, source.path, source.size, {r["name"]: r["imatrix"] for r in candidates})
            choice = recommend_here([Offer(r["name"], r["expected_size"], r["imatrix"]) for r in candidates], info, self._hardware(), self._context(),
                                    evaluation=evaluation)
            reason = choice.reason
            if choice.value is not None:
                recommended = {"name": choice.value["name"], "expected_size": choice.value["file_size"], "fit": choice.value["fit"],
                               "context_length": choice.value["context_length"], "kl_mean": choice.value["kl_mean"],
                               "kl_source": choice.value["kl_source"], "imatrix": any(r["imatrix"] for r in candidates if r["name"] == choice.value["name"])}
        return QuantizeTargetsResult(
            source={"path": str(source.path), "kind": source.kind, "name": source.name, "file_type": source.file_type, "file_size": source.size},
            warnings=list(source.warnings),
            targets=rows,
            recommended=recommended,
            recommended_reason=reason,
        )

    def imatrix(self, params: QuantizeImatrixParams, ctx: JobContext) -> QuantizeImatrixResult:
        """Hearth's importance matrix of a model, in a child process (`hearth imatrix`)."""
        from app.runtime.quantize import imatrix as im

        if params.chunks is not None and params.chunks < 1:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'chunks' must be a whole number of at least 1")
        source = self._source(params.model)
        if params.data and not Path(params.data).expanduser().is_file():
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"There is no calibration text at {params.data}.")
        data = str(Path(params.data).expanduser()) if params.data else None
        if params.out is None:
            cached = im.cached_path(source, data=data, chunks=params.chunks)
            if cached.is_file():
                from app.runtime.quantize.imatrix_file import read_imatrix

                held = read_imatrix(cached)
                return QuantizeImatrixResult(str(cached), len(held.entries), held.chunk_count, held.chunk_count * held.chunk_size,
                                             (held.datasets or [""])[0], 0.0, cached=True)
            out = cached
        else:
            out = Path(params.out).expanduser()
        result = im.compute_imatrix(source, out, data=data, chunks=params.chunks, ctx=ctx)
        return QuantizeImatrixResult(str(result["out"]), int(result["entries"]), int(result["chunks"]), int(result["tokens"]),
                                     str(result["dataset"]), float(result["seconds"]))

    def run(self, params: QuantizeRunParams, ctx: JobContext) -> QuantizeRunResult:
        from app.runtime.quantize import pipeline

        source = self._source(params.model)
        eval_tokens, output_dir, imatrix = params.eval_tokens, params.output_dir, params.imatrix
        if eval_tokens is not None and eval_tokens < 64:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'eval_tokens' must be a whole number of at least 64")
        if params.calibration_chunks is not None and params.calibration_chunks < 1:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'calibration_chunks' must be a whole number of at least 1")
        if not self._running.acquire(blocking=False):
            raise RuntimeFailure(ErrorKind.BUSY, "Another quantization is running; wait for it to finish or cancel it.")
        try:
            report = pipeline.run(
                source,
                list(params.targets),
                output_dir=Path(output_dir) if output_dir else None,
                evaluate=params.evaluate,
                state=ctx,
                eval_tokens=eval_tokens,
                imatrix=imatrix,
                calibration=params.calibration,
                calibration_chunks=params.calibration_chunks,
                torch_method=params.torch_method,
                hardware=self._hardware(),
                context_length=self._context(),
                measurements=self.measurements,
            )
        finally:
            self._running.release()
        return QuantizeRunResult(**report)


def _info_from(source: Any) -> ModelInfo | None:
    """A ModelInfo for an HF folder, from its config.json, so the planner can weigh its targets."""
    import json

    try:
        config = json.loads((source.path / "config.json").read_text(encoding="utf-8"))
        text = config.get("text_config", config)
        n_embd = int(text["hidden_size"])
        n_head = int(text["num_attention_heads"])
        return ModelInfo(
            id=source.name.lower(),
            name=source.name,
            path=str(source.path),
            format="hf",
            source="folder",
            file_size=source.size,
            architecture=str(text.get("model_type", "unknown")),
            parameters=sum(t.n_elements for t in source.tensors),
            quantization=source.file_type,
            context_length=int(text.get("max_position_embeddings", 0) or 0),
            n_layers=int(text["num_hidden_layers"]),
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=int(text.get("num_key_value_heads", n_head)),
            head_dim=int(text.get("head_dim") or n_embd // n_head),
            vocab_size=int(text["vocab_size"]),
            has_chat_template=True,
        )
    except (OSError, ValueError, KeyError, TypeError):
        log.exception("cannot read the shape of %s for the planner", source.path)
        return None
