"""The measured and library-computed inputs of the torch plan: dtype speed, and accelerate's device map.

``dtype_speed`` times a matrix-vector product at the model's shapes in fp32 and bf16 (what one
decode step is made of on a CPU): whether bf16 is faster depends on the CPU (AVX512-BF16/AMX
make it so; elsewhere torch converts to fp32 on the fly and the halved bytes may or may not pay).
It is measured once per machine and shape and kept in the measurement store, where the plan reads it.

``device_map`` asks accelerate where each module goes under per-device budgets, on a model built
on the meta device from its config (no weights are read), so a 70B plan costs a second, not RAM.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BENCH_BYTES = 64 * 2**20  # fp32 weights streamed per timing: past the caches, like a real decode


def measure_dtype_speed(rows: int, cols: int, *, threads: int | None = None) -> dict[str, float] | None:
    """GB/s of weights a matrix-vector product streams in each CPU dtype, for [rows, cols] weights,
    and products per second (about a second); None without torch. The caller keeps the result in
    the measurement store (``torch_plan.measure_missing``)."""
    try:
        import torch
    except ImportError:
        return None
    if threads:
        torch.set_num_threads(threads)
    n_mats = max(2, BENCH_BYTES // (rows * cols * 4))
    result: dict[str, float] = {}
    with torch.inference_mode():
        for name in ("float32", "bfloat16"):
            dtype = getattr(torch, name)
            weights = [torch.randn(rows, cols).to(dtype) for _ in range(n_mats)]
            x = torch.randn(1, cols).to(dtype)
            best = float("inf")
            for _ in range(4):
                started = time.perf_counter()
                for w in weights:
                    torch.nn.functional.linear(x, w)
                best = min(best, time.perf_counter() - started)
            result[name] = round(n_mats * rows * cols * weights[0].element_size() / best / 1e9, 3)
            result[f"{name}_matvec_per_s"] = round(n_mats / best, 1)
    log.info("measured CPU matrix-vector speed at %dx%d: %s", rows, cols, result)
    return result


def meta_model(config: Any) -> Any:
    """The model with no weights (meta device): enough for accelerate to size every module."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # tied embeddings are one tensor: accelerate must place them together
    return model


def device_map(config: Any, *, max_memory: dict[Any, int], dtype: str) -> dict[str, Any]:
    """accelerate's module -> device ("cpu", "disk" or a GPU index) under ``max_memory`` bytes per device."""
    import torch
    from accelerate import infer_auto_device_map

    model = meta_model(config)
    return dict(
        infer_auto_device_map(
            model,
            max_memory=max_memory,
            no_split_module_classes=list(getattr(model, "_no_split_modules", None) or []),
            dtype=getattr(torch, dtype),
        )
    )


def config_for(model_info: Any) -> Any:
    """The transformers config: the folder's config.json, or one built from the model's metadata
    (a GGUF file or a listing) for the architectures that share llama's layout."""
    from transformers import AutoConfig

    path = Path(model_info.path)
    if model_info.format == "hf" and (path / "config.json").is_file():
        return AutoConfig.from_pretrained(path)
    arch = model_info.architecture if model_info.architecture in ("llama", "mistral", "qwen2") else "llama"
    return AutoConfig.for_model(
        arch,
        hidden_size=model_info.n_embd,
        num_hidden_layers=model_info.n_layers,
        num_attention_heads=model_info.n_head,
        num_key_value_heads=model_info.n_head_kv,
        head_dim=model_info.head_dim,
        vocab_size=model_info.vocab_size,
        intermediate_size=_ffn_width(model_info),
        max_position_embeddings=model_info.context_length or 4096,
        tie_word_embeddings=model_info.parameters < 4_000_000_000,
    )


def _ffn_width(m: Any) -> int:
    """The feed-forward width that makes the parameter count come out right (3 matrices per layer)."""
    attn = m.n_embd * m.head_dim * (m.n_head * 2 + m.n_head_kv * 2)
    embed = m.vocab_size * m.n_embd * (1 if m.parameters < 4_000_000_000 else 2)
    per_layer = max((m.parameters - embed) / max(m.n_layers, 1) - attn, m.n_embd)
    return max(int(per_layer / (3 * m.n_embd) / 256 + 0.5) * 256, 256)
