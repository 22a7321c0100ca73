"""`hearth finetune`: the service the fine-tune wizard uses (prepare, train, export), in a terminal.

Moved here from ``app.runtime.finetune.cli``: what a terminal shows is the CLI's business, not the
runtime's. Ctrl-C pauses a run (its checkpoints stay; ``--resume RUN_DIR`` continues it).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from app.cli.runner import EXIT_FAILED, EXIT_OK, Session, UsageError
from app.runtime.outputs import check_output_folder
from app.runtime.protocol import Method

SETTING_FLAGS = ("rank", "alpha", "learning_rate", "epochs", "batch_size", "grad_accum", "seq_length", "threads", "max_steps",
                 "save_steps", "eval_steps", "sample_steps", "validation_fraction", "dropout", "seed", "device", "on_error",
                 "sample_prompt", "grad_checkpointing", "packing", "quantize_4bit", "prompt_loss", "eval_data")


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("finetune", help="teach a model from your data with LoRA (settings chosen for this machine; every one can be set)")
    parser.add_argument("base", help="base model: library id, GGUF path or Hugging Face folder (a GGUF is converted once)")
    parser.add_argument("data", nargs="?", help="training data: .jsonl, .json or .csv (messages, instruction/output, prompt/completion or text)")
    parser.add_argument("--output", help="the run folder (default: under Hearth's data folder)")
    parser.add_argument("--json", action="store_true", help="print the plan or the result as JSON")
    parser.add_argument("--plan-only", action="store_true", help="show the data report and the chosen settings, and stop")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a paused, killed or cancelled run from its last checkpoint")
    parser.add_argument("--hardware", help="plan for a named hardware profile instead of this machine")
    parser.add_argument("--eval-data", help="a separate validation file (default: a split of the data)")
    parser.add_argument("--export", default="", help="after training: comma-separated adapter,merged,gguf")
    parser.add_argument("--qtype", default="Q8_0", help="GGUF type for --export gguf (default Q8_0; F16 keeps 16-bit)")
    parser.add_argument("--name", help="the exported model's name in the library")
    for flag, kind, help_text in (
        ("--rank", int, "LoRA rank r"), ("--alpha", int, "LoRA alpha"), ("--learning-rate", float, "peak learning rate"),
        ("--epochs", float, "passes over the data"), ("--batch-size", int, "examples per step"),
        ("--grad-accum", int, "steps accumulated per optimizer step"), ("--seq-length", int, "tokens per example (longer are cut)"),
        ("--threads", int, "CPU threads"), ("--max-steps", int, "stop after this many optimizer steps"),
        ("--save-steps", int, "checkpoint every N steps"), ("--eval-steps", int, "validation loss every N steps"),
        ("--sample-steps", int, "a sample answer every N steps"), ("--validation-fraction", float, "share of the data held out"),
        ("--dropout", float, "LoRA dropout"), ("--seed", int, "random seed"), ("--device", str, "cpu or cuda"),
        ("--on-error", str, "skip or stop on bad data rows"), ("--sample-prompt", str, "the question sampled during training"),
    ):
        parser.add_argument(flag, type=kind, help=help_text)
    for name, help_text in (("grad-checkpointing", "recompute activations to save memory"), ("packing", "pack short examples into full sequences"),
                            ("quantize-4bit", "QLoRA: a 4-bit base (CUDA and bitsandbytes)"), ("prompt-loss", "train on the prompt tokens too")):
        parser.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None, help=help_text)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, session: Session) -> int:
    if not args.resume and not args.data:
        raise UsageError("give a data file (or --resume RUN_DIR)")
    if args.output and not args.resume:  # before any work (the base's conversion takes a while)
        check_output_folder(args.output, what="the training run", new=True)
    settings = {k: getattr(args, k) for k in SETTING_FLAGS if getattr(args, k, None) is not None}
    params: dict[str, Any] = {"base": args.base, "data": args.data, "output": args.output, "settings": settings, "hardware": args.hardware}
    out = session.console.out
    if args.plan_only:
        if not args.data:
            raise UsageError("--plan-only needs the data file")
        prepared = session.run(Method.FINETUNE_PREPARE, params)
        _print_plan(session, prepared, as_json=args.json)
        return EXIT_OK if prepared.get("plan") else EXIT_FAILED
    if args.resume:
        params = {"resume": args.resume}

    def resume(data: dict[str, Any]) -> str:
        return f"hearth finetune {args.base} --resume {data.get('run_dir') or args.resume}"

    result = session.run(Method.FINETUNE_TRAIN, params, progress=not args.json, resume=resume)
    if args.export:
        formats = [f.strip() for f in args.export.split(",") if f.strip()]
        result["export"] = session.run(Method.FINETUNE_EXPORT, {"run_dir": result["run_dir"], "formats": formats, "qtype": args.qtype, "name": args.name},
                                       progress=not args.json)
    if args.json:
        out.write(json.dumps(result, indent=2, default=str) + "\n")
    else:
        _print_result(session, result)
    return EXIT_OK


def _print_plan(session: Session, prepared: dict[str, Any], *, as_json: bool) -> None:
    out = session.console.out
    if as_json:
        out.write(json.dumps(prepared, indent=2, default=str) + "\n")
        return
    report = prepared["report"]
    out.write(f"{report['summary']}\n")
    for issue in report["issues"]:
        out.write(f"  line {issue['line']}: {issue['reason']}\n")
    plan = prepared.get("plan")
    if not plan:
        return
    for name, choice in plan.items():
        if isinstance(choice, dict) and "reason" in choice:
            value = choice["value"] if name != "memory" else f"{choice['value']['total'] / 2**30:.2f} GiB"
            out.write(f"{name:19} {str(value):>10}  {'(yours) ' if choice['overridden'] else ''}{choice['reason']}\n")


def _print_result(session: Session, result: dict[str, Any]) -> None:
    out = session.console.out
    first, last = result.get("eval_loss_first"), result.get("eval_loss")
    out.write(f"trained {result['steps']} steps in {result['seconds']:.0f} s; train loss {result['train_loss']:.3f}"
              + (f"; validation loss {first:.3f} -> {last:.3f}" if first is not None and last is not None else "") + "\n")
    estimate = (result.get("memory_estimate") or {}).get("total")
    out.write(f"peak memory {result['peak_memory']['bytes'] / 2**30:.2f} GiB measured ({result['peak_memory']['device']})"
              + (f", {estimate / 2**30:.2f} GiB estimated" if estimate else "") + "\n")
    out.write(f"adapter: {result['adapter']}\n")
    if result.get("model_id"):  # registered in the library over its base: a model at once
        out.write(f"in the library as {result['model_id']} ({result.get('model_name', '')}); chat with it: hearth chat --model {result['model_id']}\n")
    for key, value in (result.get("export") or {}).items():
        out.write(f"{key}: {value}\n")
