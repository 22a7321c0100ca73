"""Ask a model a list of questions greedily, in one left-padded batch: a quick check of what it learned.

Batching matters on a CPU: 20-odd short answers decode in one pass of a few seconds, where one
question at a time takes a minute. Used by the tests and by ``hearth finetune --check``-style checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def answer_all(model_dir: str | Path, questions: list[str], *, max_new_tokens: int = 24, model: Any = None, tokenizer: Any = None) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(model_dir))
    model = model or AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True) for q in questions]
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    finally:
        tokenizer.padding_side = side
    return [tokenizer.decode(row[batch["input_ids"].shape[1]:], skip_special_tokens=True).strip() for row in out]


def score(answers: list[str], keys: list[str]) -> int:
    """How many answers contain their expected key word (case-insensitive)."""
    return sum(key.lower() in answer.lower() for answer, key in zip(answers, keys))
