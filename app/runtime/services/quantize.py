"""The quantize service: what a model can become (targets with expected sizes and the planner's
pick for this machine), and the run itself, as a cancellable background job.

The run reports progress per step and per tensor (``stage``: step / convert / quantize /
evaluate, with ``step``, ``steps``, ``index``, ``total``, ``eta_s``) and ends with the pipeline's
report; its outputs land in the library's models folder unless ``output_dir`` says otherwise.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.runtime import library
from app.runtime.hardware import Hardware
from app.runtime.jobs import JobState
from app.runtime.library import ModelInfo
from app.runtime.protocol import ErrorKind, RuntimeFailure
from app.runtime.quantize import targets as registry

log = logging.getLogger(__name__)


class QuantizeService:
    def __init__(self, *, models: Callable[[], list[ModelInfo]], hardware: Callable[[], Hardware], default_prefs: Callable[[], dict[str, Any]]) -> None:
        self._models = models
        self._hardware = hardware
        self._default_prefs = default_prefs
        self._running = threading.Lock()  # one quantization at a time: each wants the whole machine

    def _source(self, params: dict[str, Any]) -> Path:
        ref = params.get("model")
        if not isinstance(ref, str) or not ref.strip():
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'model' must name a library model, a GGUF file or a Hugging Face folder")
        as_path = Path(ref).expanduser()
        if as_path.is_dir():
            return as_path
        return Path(library.resolve(ref, self._models()).path)

    def _context(self) -> int | None:
        value = self._default_prefs().get("context_length")
        return int(value) if isinstance(value, int) and value > 0 else None

    def targets(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        """Every target with its expected size, and the one the planner would run here."""
        from app.runtime.planner import Variant, choose_variant
        from app.runtime.quantize import safety

        source = safety.inspect_source(self._source(params))
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
        return {
            "source": {"path": str(source.path), "kind": source.kind, "name": source.name, "file_type": source.file_type, "file_size": source.size},
            "warnings": source.warnings,
            "targets": rows,
            "recommended": recommended,
            "recommended_reason": reason,
        }

    def run(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        from app.runtime.quantize import pipeline

        source = self._source(params)
        wanted = params.get("targets")
        if isinstance(wanted, str):
            wanted = [wanted]
        if not isinstance(wanted, list) or not all(isinstance(t, str) for t in wanted):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'targets' must be a list of target names, such as [\"Q4_K_M\", \"Q8_0\"]")
        output_dir = params.get("output_dir")
        imatrix = params.get("imatrix")
        eval_tokens = params.get("eval_tokens")
        if eval_tokens is not None and (not isinstance(eval_tokens, int) or isinstance(eval_tokens, bool) or eval_tokens < 64):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'eval_tokens' must be a whole number of at least 64")
        if not self._running.acquire(blocking=False):
            raise RuntimeFailure(ErrorKind.BUSY, "Another quantization is running; wait for it to finish or cancel it.")
        try:
            return pipeline.run(
                source,
                wanted,
                output_dir=Path(output_dir) if output_dir else None,
                evaluate=bool(params.get("evaluate", True)),
                state=state,
                eval_tokens=eval_tokens,
                imatrix=Path(imatrix) if imatrix else None,
                hardware=self._hardware(),
                context_length=self._context(),
            )
        finally:
            self._running.release()


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
