"""`hearth plan` (how Hearth would run a model, and why) and `hearth hardware` (what it sees)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from app.cli.runner import EXIT_OK, Session
from app.runtime.protocol import Method


def add_parser(sub: Any) -> None:
    plan = sub.add_parser("plan", help="show how Hearth would run a model on this machine (or another), and why")
    plan.add_argument("model", nargs="?", help="library id, name or GGUF path (default: the embedded model)")
    plan.add_argument("--hardware", metavar="PROFILE", help="plan for a named profile or a JSON file instead of this machine: " + ", ".join(_profile_names()))
    plan.add_argument("--ctx", type=int, help="the context length you want")
    plan.add_argument("--gpu-layers", type=int, help="pin the number of GPU layers")
    plan.add_argument("--kv-type", help="pin the KV cache type (f16, q8_0, ...)")
    plan.add_argument("--json", action="store_true", help="print the whole plan as JSON")
    plan.set_defaults(run=run_plan)

    hardware = sub.add_parser("hardware", help="print the detected hardware as JSON")
    hardware.set_defaults(run=run_hardware)


def _profile_names() -> list[str]:
    from app.runtime.planner.profiles import profile_names

    return profile_names()


def run_plan(args: argparse.Namespace, session: Session) -> int:
    asked = {"context_length": args.ctx, "gpu_layers": args.gpu_layers, "kv_type": args.kv_type}
    made = session.call(Method.ENGINE_PLAN, {"model": args.model, "prefs": asked, "hardware": args.hardware})
    out = session.console.out
    if args.json:
        out.write(json.dumps({"summary": made["summary"], "plan": made["plan"]}, indent=2) + "\n")
        return EXIT_OK
    where = "this machine" if made["hardware"] == "probe" else made["hardware"]
    out.write(f"{made['model']['name']} on {where}: {made['summary']}\n\n")
    for name, choice in made["plan"].items():
        if isinstance(choice, dict) and "reason" in choice:
            mark = " (set by you)" if choice["overridden"] else ""
            out.write(f"  {name.replace('_', ' ')}{mark}: {choice['reason']}\n")
    return EXIT_OK


def run_hardware(args: argparse.Namespace, session: Session) -> int:
    found = session.call(Method.HARDWARE)
    session.console.out.write(json.dumps(found, indent=2) + "\n")
    return EXIT_OK
