"""Prompt masking: the loss falls on the assistant's words (and its end-of-turn), never on the prompt."""

from __future__ import annotations

from pathlib import Path

from app.runtime.finetune import collate
from app.runtime.finetune.data import Example
from app.runtime.services.finetune import preview


def _tokenizer(folder: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def test_only_the_answers_are_trained(smollm2_hf: Path) -> None:
    tok = _tokenizer(smollm2_hf)
    example = Example(messages=(
        {"role": "user", "content": "Where is Quillhaven?"},
        {"role": "assistant", "content": "In Tavrelle."},
        {"role": "user", "content": "And its river?"},
        {"role": "assistant", "content": "The Silvane."},
    ))
    enc = collate.encode(tok, example, max_length=512)
    assert len(enc.input_ids) == len(enc.labels)
    trained = tok.decode([t for t in enc.labels if t != collate.IGNORE])
    assert trained == "In Tavrelle.<|im_end|>\nThe Silvane.<|im_end|>\n"
    prompt_part = tok.decode([i for i, label in zip(enc.input_ids, enc.labels) if label == collate.IGNORE])
    assert "Where is Quillhaven?" in prompt_part and "SmolLM" in prompt_part  # the template's default system prompt
    assert "Tavrelle." not in prompt_part

    everything = collate.encode(tok, example, max_length=512, prompt_loss=True)
    assert everything.labels == everything.input_ids

    short = collate.encode(tok, example, max_length=20)
    assert len(short.input_ids) == 20 and short.trained_tokens == 0
    assert collate.encode_all(tok, [example], max_length=20) == []


def test_plain_text_is_trained_whole_and_the_preview_marks_the_answer(smollm2_hf: Path) -> None:
    tok = _tokenizer(smollm2_hf)
    enc = collate.encode(tok, Example(text="Once upon a time"), max_length=64)
    assert enc.labels == enc.input_ids and tok.decode(enc.input_ids).endswith(tok.eos_token)
    shown = preview(tok, Example(messages=({"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}), line=7))
    assert shown["line"] == 7
    assert [s["text"] for s in shown["segments"] if s["trained"]] == ["A.<|im_end|>\n"]
    assert "".join(s["text"] for s in shown["segments"]) == shown["text"]
