"""`hearth bench tools`: do SmolLM2's forced tool calls parse, validate and finish, and what does the grammar cost?

Over the schemas committed in ``bench_schemas.json`` (nested objects, enums, arrays, bounded
numbers, optional fields, a pattern, a date), each with ``tool_choice: "required"``: a call counts
as valid when the reply is a call (finish_reason "tool_calls", so it ended before ``max_tokens``)
whose arguments parse as JSON and validate with ``jsonschema`` against the schema as written (not
Hearth's bounded copy). The grammar's cost is llguidance's mask time per constrained token (next to
the decode time per token, to say what share it adds) and, at the first token, compiling the
grammar plus the first mask. Nothing is stored: no plan reads these figures.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

SCHEMAS = Path(__file__).with_name("bench_schemas.json")
MAX_TOKENS = 256  # a reply's budget: enough for every schema's longest bounded strings
TARGET = 1.0  # the target share of valid calls on SmolLM2


def load_schemas(path: Path = SCHEMAS) -> list[dict[str, Any]]:
    return list(json.loads(path.read_text(encoding="utf-8")))


def run(*, model_path: str | Path | None = None, max_tokens: int = MAX_TOKENS, n_threads: int | None = None,
        limit: int | None = None) -> dict[str, Any]:
    """The report (see the module docstring); ``limit`` takes only the first schemas (a quick look)."""
    import jsonschema

    from app.runtime import bench
    from app.runtime.backends.llama_cpp import LlamaCppBackend
    from app.runtime.library import embedded_model_path
    from app.runtime.chat_params import ChatParams
    from app.runtime.tools.calls import for_backend

    path = Path(model_path) if model_path else embedded_model_path()
    settings = {"n_ctx": 2048, **({"n_threads": n_threads} if n_threads else {})}
    entries = load_schemas()[:limit]
    rows: list[dict[str, Any]] = []
    backend = LlamaCppBackend(path, settings)
    try:
        started = time.perf_counter()
        backend.grammar_tokenizer()
        tokenizer_s = time.perf_counter() - started
        for entry in entries:
            tool = {"type": "function", "function": {k: entry[k] for k in ("name", "description", "parameters")}}
            params = ChatParams.from_dict({"messages": [{"role": "user", "content": entry["prompt"]}], "tools": [tool], "tool_choice": "required",
                                           "sampling": {"temperature": 0, "seed": 1, "max_tokens": max_tokens}})
            tools = for_backend(params, backend)
            assert tools is not None
            done = backend.chat(params.messages, params.sampling, on_token=lambda _: None, is_cancelled=lambda: False, **tools.backend_kwargs())
            completion, extra = tools.apply(done)
            row: dict[str, Any] = {"name": entry["name"], "finish_reason": completion.finish_reason, "completion_tokens": completion.completion_tokens,
                                   "decode_ms_per_token": round(1000 / completion.decode_tps, 3) if completion.decode_tps else None,
                                   "grammar": extra["tools"]["grammar"]}
            calls = extra["tool_calls"] or []
            try:
                if completion.finish_reason != "tool_calls" or len(calls) != 1:
                    raise ValueError(extra["tools"].get("error") or f"finish_reason {completion.finish_reason}")
                arguments = json.loads(calls[0]["function"]["arguments"])
                jsonschema.validate(arguments, entry["parameters"])
                row.update(valid=True, arguments=arguments)
            except (ValueError, jsonschema.ValidationError) as exc:
                row.update(valid=False, error=str(exc).splitlines()[0])
            rows.append(row)
    finally:
        backend.close()
    return {"machine": bench.machine_info(), "settings": {"model_file": path.name, "max_tokens": max_tokens, "tool_choice": "required",
                                                          "temperature": 0, **settings, "schemas": len(rows)},
            "figures": _figures(rows, tokenizer_s), "schemas": rows}


def _figures(rows: list[dict[str, Any]], tokenizer_s: float) -> dict[str, Any]:
    valid = sum(1 for r in rows if r["valid"])
    grammar = [r["grammar"] for r in rows if r["grammar"]]
    per_token = [g["mask_ms_per_token"] for g in grammar if g["constrained_tokens"]]
    decode = [r["decode_ms_per_token"] for r in rows if r["decode_ms_per_token"]]
    mean = lambda xs: round(statistics.fmean(xs), 4) if xs else None  # noqa: E731
    return {
        "valid_share": round(valid / len(rows), 4) if rows else None,
        "valid": valid,
        "total": len(rows),
        "cut_off_by_max_tokens": sum(1 for r in rows if r["finish_reason"] == "length"),
        "target_met": bool(rows) and valid / len(rows) >= TARGET,
        "grammar_ms_per_token": mean(per_token),
        "decode_ms_per_token": mean(decode),
        "grammar_share_of_token_time": round(statistics.fmean(per_token) / statistics.fmean(decode), 4) if per_token and decode else None,
        "first_token_grammar_ms": mean([g["compile_ms"] + g["first_mask_ms"] for g in grammar]),
        "compile_ms": mean([g["compile_ms"] for g in grammar]),
        "first_mask_ms": mean([g["first_mask_ms"] for g in grammar]),
        "tokenizer_build_ms": round(tokenizer_s * 1000, 1),  # once per loaded model
    }


def suite(args: Any, measurements: Any) -> dict[str, Any]:
    """`hearth bench tools`."""
    return run(limit=getattr(args, "limit", None))
