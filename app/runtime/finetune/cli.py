"""``hearth finetune``: the same service the wizard uses, through the in-process client, in a terminal."""

from __future__ import annotations

import argparse
import json
import queue
import sys
from typing import Any

SETTING_FLAGS = ("rank", "alpha", "learning_rate", "epochs", "batch_size", "grad_accum", "seq_length", "threads", "max_steps",
                 "save_steps", "eval_steps", "sample_steps", "validation_fraction", "dropout", "seed", "device", "on_error",
                 "sample_prompt", "grad_checkpointing", "packing", "quantize_4bit", "prompt_loss", "eval_data")


def _call(client: Any, method: Any, params: dict[str, Any], show: bool) -> dict[str, Any]:
    from app.runtime.client import failure_from_event
    from app.runtime.protocol import EventKind

    events: queue.Queue[Any] = queue.Queue()
    request_id = client.submit(method, params, events.put)
    while True:
        try:
            event = events.get()
        except KeyboardInterrupt:
            client.cancel(request_id)  # the child is killed; its checkpoints stay for --resume
            continue
        if event.event is EventKind.PROGRESS and show:
            print(event.data.get("message", ""), file=sys.stderr, flush=True)
        elif event.event is EventKind.RESULT:
            return dict(event.data)
        elif event.event is EventKind.ERROR:
            raise failure_from_event(event)


def run(args: argparse.Namespace) -> int:
    from app.runtime.client import InProcessClient
    from app.runtime.protocol import ErrorKind, Method, RuntimeFailure

    settings = {k: getattr(args, k) for k in SETTING_FLAGS if getattr(args, k, None) is not None}
    params: dict[str, Any] = {"base": args.base, "data": args.data, "output": args.output, "settings": settings, "hardware": args.hardware}
    if not args.resume and not args.data:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "give a data file (or --resume RUN_DIR)")
    client = InProcessClient()
    try:
        if args.plan_only:
            prepared = _call(client, Method.FINETUNE_PREPARE, params, show=False)
            _print_plan(prepared, as_json=args.json)
            return 0 if prepared.get("plan") else 1
        if args.resume:
            params = {"resume": args.resume}
        result = _call(client, Method.FINETUNE_TRAIN, params, show=not args.json)
        if result.get("finish_reason") == "done" and args.export:
            formats = [f.strip() for f in args.export.split(",") if f.strip()]
            result["export"] = _call(client, Method.FINETUNE_EXPORT, {"run_dir": result["run_dir"], "formats": formats, "qtype": args.qtype, "name": args.name}, show=not args.json)
        if args.json:
            print(json.dumps(result, indent=2, default=str))
        else:
            _print_result(result)
        return 0 if result.get("finish_reason") == "done" else 130
    finally:
        client.close()


def _print_plan(prepared: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(prepared, indent=2, default=str))
        return
    report = prepared["report"]
    print(report["summary"])
    for issue in report["issues"]:
        print(f"  line {issue['line']}: {issue['reason']}")
    plan = prepared.get("plan")
    if not plan:
        return
    for name, choice in plan.items():
        if isinstance(choice, dict) and "reason" in choice:
            value = choice["value"] if name != "memory" else f"{choice['value']['total'] / 2**30:.2f} GiB"
            print(f"{name:19} {str(value):>10}  {'(yours) ' if choice['overridden'] else ''}{choice['reason']}")


def _print_result(result: dict[str, Any]) -> None:
    if result.get("finish_reason") != "done":
        print(f"cancelled; resume with: hearth finetune BASE --resume {result.get('run_dir')}")
        return
    first, last = result.get("eval_loss_first"), result.get("eval_loss")
    print(f"trained {result['steps']} steps in {result['seconds']:.0f} s; train loss {result['train_loss']:.3f}"
          + (f"; validation loss {first:.3f} -> {last:.3f}" if first is not None and last is not None else ""))
    estimate = (result.get("memory_estimate") or {}).get("total")
    print(f"peak memory {result['peak_memory']['bytes'] / 2**30:.2f} GiB measured ({result['peak_memory']['device']})"
          + (f", {estimate / 2**30:.2f} GiB estimated" if estimate else ""))
    print(f"adapter: {result['adapter']}")
    for key, value in (result.get("export") or {}).items():
        print(f"{key}: {value}")
