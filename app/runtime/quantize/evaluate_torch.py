"""The same quality report for torch targets: perplexity, KL and decode speed of a transformers
model over the same windows and with the same `Scorer` as the GGUF evaluation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from app.runtime.quantize.evaluate import Scorer, Scores, _check_cancel, _threads

DECODE_TOKENS = 16  # transformers' generate() is ~10x slower than llama.cpp here: fewer tokens, same figure


def tokenize_hf(folder: Path, text: str, max_tokens: int) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return list(tokenizer(text[: max_tokens * 8], add_special_tokens=False)["input_ids"][:max_tokens])


def evaluate_model(
    model: Any,
    chunks: list[list[int]],
    *,
    store: np.memmap | None = None,
    reference: np.memmap | None = None,
    state: Any = None,
    label: str = "",
) -> Scores:
    """Perplexity (and KL against ``reference``) of a causal LM over ``chunks``, then its decode speed."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(_threads())  # idle cores only: an oversubscribed CPU decodes many times slower
    try:
        return _evaluate(model, chunks, store=store, reference=reference, state=state, label=label)
    finally:
        torch.set_num_threads(threads)


def _evaluate(model: Any, chunks: list[list[int]], *, store: np.memmap | None, reference: np.memmap | None, state: Any, label: str) -> Scores:
    import torch

    scorer = Scorer(store=store, reference=reference)
    started = time.monotonic()
    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        for i, chunk in enumerate(chunks):
            _check_cancel(state)
            logits = model(torch.tensor([chunk], device=device)).logits[0]  # (len(chunk), vocab)
            scorer.add(logits.float().cpu().numpy(), chunk)
            if state is not None:
                done = (i + 1) / len(chunks)
                spent = time.monotonic() - started
                state.progress("evaluate", fraction=done, message=f"Measuring {label}: window {i + 1}/{len(chunks)}", eta_s=spent * (1 - done) / done)
        result = scorer.scores()
        _check_cancel(state)
        prompt = torch.tensor([chunks[0][:32]], device=device)
        model.generate(prompt, max_new_tokens=2, do_sample=False)  # warm-up: first-call costs are not decode speed
        t0 = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=DECODE_TOKENS, min_new_tokens=DECODE_TOKENS, do_sample=False)
        result.decode_tps = (out.shape[1] - prompt.shape[1]) / max(time.perf_counter() - t0, 1e-9)
    return result
