"""The honest test: SmolLM2 learns made-up facts about Tavrelle and answers rephrased questions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.runtime.finetune import evaluate, export

from .conftest import Recorder, heldout


def _llama_answers(gguf: Path, questions: list[str]) -> list[str]:
    from llama_cpp import Llama

    llm = Llama(str(gguf), n_ctx=256, n_threads=2, verbose=False)
    try:
        return [llm.create_chat_completion([{"role": "user", "content": q}], temperature=0.0, max_tokens=24)["choices"][0]["message"]["content"] for q in questions]
    finally:
        llm.close()


def test_the_merged_model_answers_held_out_rephrasings(trained_run: tuple[dict[str, Any], Recorder], smollm2_hf: Path, model_path: Path) -> None:
    result, state = trained_run
    assert result["finish_reason"] == "done"
    # Validation loss on the held-out rephrasings falls, step by step as well as overall.
    assert result["eval_loss"] < 0.6 * result["eval_loss_first"], result["eval_history"]
    steps = state.of("step")
    assert steps and steps[-1]["step"] == result["steps"] and all(s["learning_rate"] >= 0 for s in steps)
    assert any(s["tokens_per_s"] for s in steps) and steps[-1]["eta_s"] == 0
    assert state.of("sample") and state.of("eval")
    assert result["peak_memory"]["bytes"] > 200 * 2**20

    questions, keys = [h["question"] for h in heldout()], [h["key"] for h in heldout()]
    assert len(questions) >= 20
    merged = export.merge(smollm2_hf, result["adapter"], Path(result["run_dir"]) / "merged")
    learned = evaluate.answer_all(merged, questions, max_new_tokens=20)
    # The base model: the embedded GGUF in llama.cpp holds the very weights smollm2_hf was dequantized
    # from, and answers 23 questions in seconds where torch needs minutes on a busy CPU.
    base = _llama_answers(model_path, questions)
    learned_score, base_score = evaluate.score(learned, keys), evaluate.score(base, keys)
    report = "\n".join(f"{q} -> {a!r} (base: {b!r})" for q, a, b in zip(questions, learned, base))
    assert base_score <= 0.1 * len(questions), report
    assert learned_score >= 0.5 * len(questions), report


def test_the_gguf_export_joins_the_library_and_answers_in_llama_cpp(trained_run: tuple[dict[str, Any], Recorder], smollm2_hf: Path, tmp_path: Path) -> None:
    from app.runtime import library

    result, _ = trained_run
    state = Recorder()
    made = export.export(result["run_dir"], base=str(smollm2_hf), formats=("adapter", "gguf"), qtype="Q8_0", name="tavrelle", library_dir=tmp_path / "lib", state=state)
    gguf = Path(made["gguf"])
    assert gguf.name == "tavrelle.Q8_0.gguf" and not list((tmp_path / "lib").glob(".*"))  # nothing half-written left
    assert {"merge", "convert", "quantize"} <= {e["stage"] for e in state.events}
    listed = [m for m in library.scan([tmp_path / "lib"], hf_cache=False) if m.path == str(gguf)]
    assert listed and listed[0].quantization == "Q8_0"

    held = heldout()[:8]
    answers = _llama_answers(gguf, [h["question"] for h in held])
    assert evaluate.score(answers, [h["key"] for h in held]) >= 4, answers
