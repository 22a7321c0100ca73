"""Decode speed of the torch backend against plain ``generate()`` and the memory-bandwidth roofline.

Decoding one token reads every weight once, so ``bandwidth / bytes of weights`` is the most tokens
per second any implementation can reach (the roofline); the fraction of it reached says how much
time goes to overhead rather than to reading weights. Everything is measured in one run, side by
side, because on a shared machine figures from different runs do not compare.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROMPT = "Write a long numbered list of everyday objects, one per line, with a short description of each."
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
QUANT_SCHEMES = ("int8", "int4-g64")


def decode_speed(folder: str | Path, *, dtypes: tuple[str, ...] = ("float32", "bfloat16"), n_tokens: int = 64) -> dict[str, Any]:
    """Tokens/s of plain fp32 ``generate()`` and of the backend's loop in each of ``dtypes`` (a
    dtype, or a weight-quantization scheme such as "int8" on fp32 activations, or "bfloat16+int8"), with the
    fraction of the roofline each reaches. Greedy decoding, best of two runs after a warm-up."""
    from app.runtime.hardware import probe

    hw = probe()
    bandwidth = float(hw.ram_bandwidth or 0)
    folder = Path(folder)
    generate = _generate_speed(folder, n_tokens)
    params = generate.pop("parameters")
    rows: dict[str, Any] = {
        "model": folder.name,
        "n_tokens": n_tokens,
        "threads": hw.cpu_cores_physical,
        "ram_bandwidth_bytes_per_s": int(bandwidth),
        "parameters": params,
        "generate_float32": _with_roofline(generate, params * 4, bandwidth),
    }
    for name in dtypes:
        settings: dict[str, Any] = {"dtype": name, "n_ctx": 2048, "threads": hw.cpu_cores_physical}
        bytes_per_weight: float = BYTES.get(name, 4)
        activations, _, scheme = name.rpartition("+")  # "bfloat16+int8": int8 weights, bf16 everywhere else
        if scheme in QUANT_SCHEMES:
            settings = {**settings, "dtype": activations or "float32", "weight_quant": scheme}
            bytes_per_weight = 1.03 if scheme == "int8" else 0.56
        rows[f"loop_{name}"] = _with_roofline(_loop_speed(folder, settings, n_tokens), int(params * bytes_per_weight), bandwidth)
    base = rows["generate_float32"]["tokens_per_s"]
    for key, row in rows.items():
        if key.startswith("loop_") and base:
            row["vs_generate_float32"] = round(row["tokens_per_s"] / base, 2)
    log.info("torch decode speed: %s", rows)
    return rows


def _with_roofline(row: dict[str, Any], weight_bytes: int, bandwidth: float) -> dict[str, Any]:
    roofline = bandwidth / weight_bytes if weight_bytes and bandwidth else 0.0
    return {**row, "weight_bytes_per_token": weight_bytes, "roofline_tokens_per_s": round(roofline, 1),
            "roofline_fraction": round(row["tokens_per_s"] / roofline, 3) if roofline else None}


def _generate_speed(folder: Path, n_tokens: int) -> dict[str, Any]:
    """Plain fp32 ``model.generate()``: decode rate from the difference of an n-token and a 1-token run."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])

    def run(n: int) -> float:
        started = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)
        return time.perf_counter() - started

    run(4)  # warm-up
    best = min(run(n_tokens) - run(1) for _ in range(2))
    params = sum(p.numel() for p in model.parameters())
    return {"tokens_per_s": round((n_tokens - 1) / best, 2), "parameters": params}


def _loop_speed(folder: Path, settings: dict[str, Any], n_tokens: int) -> dict[str, Any]:
    from app.runtime.backends.torch import TorchBackend
    from app.runtime.protocol import Sampling

    backend = TorchBackend(folder, settings)
    try:
        best = None
        for _ in range(3):  # the first is the warm-up
            done = backend.chat([{"role": "user", "content": PROMPT}], Sampling(temperature=0.0, repeat_penalty=1.1, max_tokens=n_tokens),
                                on_token=lambda _: None, is_cancelled=lambda: False)
            backend._new_cache()  # every run evaluates its prompt: the same work each time
            if best is None or done.decode_tps > best.decode_tps:
                best = done
        assert best is not None
        return {"tokens_per_s": round(best.decode_tps, 2), "tokens": best.completion_tokens, "load_seconds": round(backend.load_seconds, 2)}
    finally:
        backend.close()
