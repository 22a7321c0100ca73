"""Setting up SpecExec (`torch_spec`) for the torch backend: whether to speculate, which draft to load,
and the loop that streams its tokens the way the backend's plain loop does.

Kept apart from the tree and cache mechanics so that each reads in one sitting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from app.runtime.backends.torch_spec import Draft, TreeShape, offloaded_share

__all__ = ["SPECULATE_MODES", "SpecSetup", "mode_of", "setup", "stream"]

log = logging.getLogger(__name__)

SPECULATE_MODES = ("auto", "on", "off")  # the torch backend's "speculate" setting
OFFLOAD_SHARE = 1 / 3  # "auto" speculates when at least this share of the target's layers is offloaded
DRAFT_BYTES = {"none": 4.0, "int8": 1.03, "int4-g64": 0.56}  # bytes per weight of a resident draft in transformers
DRAFT_QUANTS = ("gguf", *DRAFT_BYTES)  # "gguf": the GGUF file the target came from, in llama.cpp (the default when there is one)
DRAFT_MARGIN = 256 * 2**20  # activations, its KV cache, allocator slack


@dataclass
class SpecSetup:
    """What the torch backend speculates with: the draft (None: off) and why."""

    draft: Draft | None
    reason: str
    shape: TreeShape = field(default_factory=TreeShape)

    def to_dict(self) -> dict[str, Any]:
        return {"on": self.draft is not None, "reason": self.reason, "tree": vars(self.shape).copy() if self.draft else None}

    def close(self) -> None:
        """Free the draft's own memory (a llama.cpp context) now rather than at garbage collection."""
        draft, self.draft = self.draft, None
        close = getattr(draft, "close", None)
        if close is not None:
            close()

    def off_reason(self, constrained: bool, speculate: str | None) -> str | None:
        """Why one reply does not speculate (None: it does): no draft, a grammar, or the reply's own setting."""
        if self.draft is None:
            return self.reason
        if constrained:
            return "off while a mask or grammar constrains the reply"
        try:
            return "off for this reply (speculate=off)" if mode_of(speculate) == "off" else None
        except ValueError:
            return f"off for this reply: unknown speculate mode {speculate!r}"


def mode_of(value: Any) -> str:
    """A ``speculate`` setting as "auto", "on" or "off" (True/False and the planner's modes too:
    "lookup" has no meaning for a torch target and counts as auto; "draft:MODEL" as on)."""
    if value is None or value == "auto" or value == "lookup":
        return "auto"
    if value is True or value == "on" or (isinstance(value, str) and value.startswith("draft:")):
        return "on"
    if value is False or value == "off":
        return "off"
    raise ValueError(f"speculate must be one of {', '.join(SPECULATE_MODES)}, not {value!r}")


def setup(model: Any, folder: Any, settings: dict[str, Any]) -> SpecSetup:
    """Load a draft when the settings and the target's placement call for one.

    ``auto`` speculates when at least a third of the target's layers is offloaded (`offloaded_share`):
    then a forward over a tree costs about what one token costs. A resident target on a CPU is
    compute-bound (a 33-token forward costs many times a 1-token one), so a tree would lose there.
    The draft is ``settings["draft"]`` (a GGUF file, or a folder with the same vocabulary) or the
    target's own folder, held entirely in RAM. When that is a GGUF file or a folder converted from
    one, the GGUF file drafts in llama.cpp (`torch_spec_llama`; ``draft_quant`` "gguf", the
    default there); else transformers loads the folder with ``draft_quant`` ("none", "int8",
    "int4-g64"), or the first of `_draft_quants` that fits the free RAM.
    """
    import psutil

    shape = TreeShape(**dict(settings.get("spec_tree") or {}))
    try:
        mode = mode_of(settings.get("speculate"))
    except ValueError as exc:
        from app.runtime.protocol import ErrorKind, RuntimeFailure

        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, str(exc)) from exc
    if mode == "off":
        return SpecSetup(None, "Speculation is off (set so).", shape)
    policy = str(settings.get("kv_policy") or "full")
    if policy != "full" or settings.get("compile"):
        why = f"the {policy} KV policy evicts tokens" if policy != "full" else "the compiled decode step uses a static cache"
        return SpecSetup(None, f"No SpecExec: {why}, and a tree's rejected branches must be cut out of the cache.", shape)
    n_layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    share = offloaded_share(getattr(model, "hf_device_map", None) or settings.get("device_map"), n_layers)
    if mode == "auto" and share < OFFLOAD_SHARE:
        return SpecSetup(None, f"No SpecExec: {share:.0%} of the layers are offloaded (it pays from {OFFLOAD_SHARE:.0%}); "
                               "a resident target is compute-bound, so scoring a tree costs many times one token.", shape)
    from pathlib import Path

    from app.runtime.backends.torch_load import load_model

    source = Path(str(settings.get("draft") or folder))
    target_vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    gguf = gguf_source(source)
    if gguf is not None and settings.get("draft_quant") in (None, "gguf"):
        return _llama_draft(gguf, target_vocab, share, shape, settings)
    if settings.get("draft_quant") == "gguf":
        return SpecSetup(None, f"No SpecExec: draft_quant is gguf, but {source.name} is neither a GGUF file nor converted from one.", shape)
    draft_config = _read_config(source)
    if int(draft_config.get("vocab_size") or 0) != target_vocab:
        return SpecSetup(None, f"No SpecExec: the draft {source.name} has a vocabulary of {draft_config.get('vocab_size')} tokens, "
                               f"the target {target_vocab}; a draft must share the target's vocabulary.", shape)
    params = _parameter_count(draft_config)
    free = psutil.virtual_memory().available
    fitting = [q for q in _draft_quants(settings.get("draft_quant")) if int(params * DRAFT_BYTES[q]) + DRAFT_MARGIN <= free]
    if not fitting:
        smallest = min(DRAFT_BYTES[q] for q in _draft_quants(settings.get("draft_quant")))
        return SpecSetup(None, f"No SpecExec: a resident draft needs at least {(params * smallest + DRAFT_MARGIN) / 2**30:.1f} GiB of RAM; "
                               f"{free / 2**30:.1f} GiB is free.", shape)
    quant = fitting[0]
    draft_model, _ = load_model(source, {"dtype": settings.get("dtype", "float32"), "weight_quant": None if quant == "none" else quant})
    import torch

    log.info("SpecExec draft: %s (%s) in RAM; %.0f%% of the target's layers are offloaded", source.name, quant, share * 100)
    return SpecSetup(Draft(draft_model, device=torch.device("cpu")),
                     f"SpecExec: {share:.0%} of the target's layers are offloaded, so a resident {'full-precision' if quant == 'none' else quant} draft of {source.name} "
                     f"grows a tree of up to {shape.budget} tokens that the target checks in one forward.", shape)


def gguf_source(source: Any) -> Any:
    """The GGUF file behind a draft source: the file itself, or the one a cached folder was
    converted from (`hf_folder.MARKER`); None for a plain HF folder."""
    from pathlib import Path

    from app.runtime.hf_folder import MARKER

    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    try:
        named = Path((path / MARKER).read_text(encoding="utf-8").strip())
    except OSError:
        return None
    return named if named.is_file() else None


def _llama_draft(gguf: Any, target_vocab: int, share: float, shape: TreeShape, settings: dict[str, Any]) -> SpecSetup:
    """The GGUF file in llama.cpp as the draft (`torch_spec_llama`): the quantized model the target
    was converted from, several times faster per token than a float32 copy in transformers."""
    import psutil

    from app.runtime.backends.torch_spec_llama import LlamaDraft

    free, need = psutil.virtual_memory().available, gguf.stat().st_size + DRAFT_MARGIN
    if need > free:
        return SpecSetup(None, f"No SpecExec: the draft {gguf.name} needs {need / 2**30:.1f} GiB of RAM; {free / 2**30:.1f} GiB is free.", shape)
    n_ctx = int(settings.get("n_ctx") or 2048) + shape.budget + 2
    draft = LlamaDraft(gguf, n_ctx=n_ctx, n_threads=settings.get("threads"))
    if draft.n_vocab != target_vocab:
        draft.close()
        return SpecSetup(None, f"No SpecExec: the draft {gguf.name} has a vocabulary of {draft.n_vocab} tokens, the target "
                               f"{target_vocab}; a draft must share the target's vocabulary.", shape)
    log.info("SpecExec draft: %s in llama.cpp (%.2f s to load); %.0f%% of the target's layers are offloaded", gguf.name, draft.load_seconds, share * 100)
    return SpecSetup(draft, f"SpecExec: {share:.0%} of the target's layers are offloaded, so {gguf.name}, the quantized file it was "
                            f"converted from, drafts in llama.cpp: a chain of guesses with runners-up, up to {shape.budget} tokens that "
                            "the target checks in one forward.", shape)


def _draft_quants(wanted: Any) -> list[str]:
    """The draft's weight types to try, best first: the one asked for; else the full model when
    int8 has not been measured faster on this CPU (`hearth bench kernels`), then int8, then int4."""
    if wanted:
        if str(wanted) not in DRAFT_BYTES:
            from app.runtime.protocol import ErrorKind, RuntimeFailure

            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"draft_quant must be one of {', '.join(DRAFT_QUANTS)}, not {wanted!r}")
        return [str(wanted)]
    from app.runtime.quantize.torch_quant import cpu_speedup

    faster = (cpu_speedup("int8") or 0.0) >= 1.0
    return ["int8", "int4-g64"] if faster else ["none", "int8", "int4-g64"]


def _read_config(folder: Any) -> dict[str, Any]:
    import json
    from pathlib import Path

    try:
        return dict(json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def _parameter_count(config: dict[str, Any]) -> int:
    """About how many weights a Llama-shaped model has, from its config (for the RAM check)."""
    hidden = int(config.get("hidden_size") or 0)
    layers = int(config.get("num_hidden_layers") or 0)
    ffn = int(config.get("intermediate_size") or 4 * hidden)
    heads = int(config.get("num_attention_heads") or 1)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or (hidden // max(heads, 1)))
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    embeddings = int(config.get("vocab_size") or 0) * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return layers * (attention + 3 * hidden * ffn) + embeddings


def stream(tokens: Iterator[int], *, tokenizer: Any, sampling: Any, eos: frozenset[int], on_token: Any,
           is_cancelled: Any) -> tuple[float | None, int, str, str]:
    """Stream a token source as the backend's plain loop does (stop strings, end of reply, cancel,
    max tokens); (first token time, count, finish, text). Closing the source leaves its caches whole."""
    import time

    from app.runtime.backends.streaming import StopText
    from app.runtime.backends.torch_sample import IncrementalText

    pieces, stops = IncrementalText(tokenizer), StopText(sampling.stop)
    first_at: float | None = None
    n_out, finish = 0, "length"
    try:
        for token in tokens:
            if first_at is None:
                first_at = time.perf_counter()
            if token in eos:
                finish = "stop"
                break
            n_out += 1
            shown, stopped = stops.feed(pieces.add(token))
            if shown:
                on_token(shown)
            if stopped:
                finish = "stop"
                break
            if is_cancelled():
                finish = "cancelled"
                break
            if n_out >= sampling.max_tokens:
                break
    finally:
        close = getattr(tokens, "close", None)
        if close is not None:
            close()
    if finish != "stop":
        shown, stopped = stops.feed(pieces.flush())
        finish = "stop" if stopped else finish
        tail = shown + stops.flush(stopped)
        if tail:
            on_token(tail)
    return first_at, n_out, finish, stops.text
