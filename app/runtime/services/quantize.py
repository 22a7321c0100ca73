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
from app.runtime.protocol import ErrorKind, Method, RuntimeFailure
from app.runtime.quantize import targets as registry

log = logging.getLogger(__name__)


# ---- declared params and results ----------------------------------------------------------------


@dataclass(frozen=True)
class QuantizeTargetsParams:
    model: str  # a library model, a GGUF file or a Hugging Face folder


@dataclass(frozen=True)
class QuantizeTargetsResult:
    source: dict[str, Any]  # path, kind, name, file_type, file_size
    warnings: list[str]
    targets: list[dict[str, Any]]  # every target with expected_size and common
    recommended: dict[str, Any] | None  # name, expected_size, fit, context_length
    recommended_reason: str


@dataclass(frozen=True)
class QuantizeRunParams:
    model: str
    targets: list[str]  # target names, such as ["Q4_K_M", "Q8_0"]
    output_dir: str | None = None  # default: the library's models folder
    evaluate: bool = True  # measure perplexity, agreement and speed against the source
    eval_tokens: int | None = None
    imatrix: str | None = None  # an importance matrix, for the IQ targets


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


class QuantizeService:
    def __init__(self, *, models: Callable[[], list[ModelInfo]], hardware: Callable[[], Hardware], default_prefs: Callable[[], dict[str, Any]]) -> None:
        self._models = models
        self._hardware = hardware
        self._default_prefs = default_prefs
        self._running = threading.Lock()  # one quantization at a time: each wants the whole machine

    def methods(self) -> list[MethodSpec[Any, Any]]:
        """Quantizing runs child processes for minutes: a job of its own, cancelled by killing them."""
        return [
            MethodSpec(Method.QUANTIZE_TARGETS.value, QuantizeTargetsParams, QuantizeTargetsResult, Mode.BACKGROUND, self.targets),
            MethodSpec(Method.QUANTIZE_RUN.value, QuantizeRunParams, QuantizeRunResult, Mode.BACKGROUND, self.run,
                       doc="cancel removes every partial output"),
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
        """Every target with its expected size, and the one the planner would run here."""
        from app.runtime.planner import Variant, choose_variant
        from app.runtime.quantize import safety

        source = safety.inspect_source(self._source(params.model))
        rows = []
        for t in registry.TARGETS.values():
            row = t.to_dict()
            row["expected_size"] = registry.estimate_size(t, source.tensors)
            row["common"] = t.name in registry.COMMON
            rows.append(row)
        recommended: dict[str, Any] | None = None
        reason = ""
        candidates = [r for r in rows if r["kind"] == "gguf" and not r["needs_imatrix"] and r["name"] not in ("BF16", "TQ1_0", "TQ2_0", "MXFP4_MOE")]
        info = source.info or _info_from(source)
        if info is not None:
            try:
                choice = choose_variant([Variant(r["name"], r["expected_size"]) for r in candidates], info, self._hardware(), self._context())
                recommended = {"name": choice.value["name"], "expected_size": choice.value["file_size"], "fit": choice.value["fit"], "context_length": choice.value["context_length"]}
                reason = choice.reason
            except RuntimeFailure as exc:
                reason = exc.message
        return QuantizeTargetsResult(
            source={"path": str(source.path), "kind": source.kind, "name": source.name, "file_type": source.file_type, "file_size": source.size},
            warnings=list(source.warnings),
            targets=rows,
            recommended=recommended,
            recommended_reason=reason,
        )

    def run(self, params: QuantizeRunParams, ctx: JobContext) -> QuantizeRunResult:
        from app.runtime.quantize import pipeline

        source = self._source(params.model)
        eval_tokens, output_dir, imatrix = params.eval_tokens, params.output_dir, params.imatrix
        if eval_tokens is not None and eval_tokens < 64:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'eval_tokens' must be a whole number of at least 64")
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
                imatrix=Path(imatrix) if imatrix else None,
                hardware=self._hardware(),
                context_length=self._context(),
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
