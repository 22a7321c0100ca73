"""`hearth bench`: measure the README's figures, write them as JSON and into the measurement store.

The one subcommand that is not a runtime request: a bench measures the runtime from outside (the
engine directly and through a worker process, the API server over HTTP), so it runs the suites of
`app.runtime.bench_suites` itself. Its JSON is its answer, on stdout.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from app.cli.runner import EXIT_OK, EXIT_USAGE, Session

# The suites are app.runtime.bench_suites.SUITES, imported only when one runs.
BENCH_SUITES = ("runtime", "kv", "kernels", "docs", "spec", "abuse", "tools")


def add_parser(sub: Any) -> None:
    bench = sub.add_parser("bench", help="measure the figures in the README and write them as JSON (and the measurement store)")
    bench.add_argument(
        "suite", nargs="?", default="runtime", choices=BENCH_SUITES,
        help="runtime: the chat engine (default); kv: KV-cache policies and torch decode; kernels: the bundled kernels; "
             "docs: document retrieval (recall@5, indexing MB/s, query ms); "
             "spec: speculative decoding off/on in interleaved pairs (--runs pairs); "
             "abuse: the API server against bad requests (status, answer time, the next request's wait, memory); "
             "tools: forced tool calls over the committed schemas (valid share, grammar ms per token and at the first token)",
    )
    bench.add_argument("--list", dest="list_measurements", action="store_true",
                       help="list the saved measurements (kind, key, value, machine, date, current or stale) instead of measuring")
    bench.add_argument("--forget", dest="forget", nargs="?", const="", metavar="KIND",
                       help="clear the saved measurements (all, or one kind) instead of measuring")
    bench.add_argument("--json", dest="json_path", metavar="PATH", nargs="?", const="",
                       help="write the JSON here as well as to stdout (the JSON always goes to stdout; --json alone says only that)")
    bench.add_argument("--runs", type=int, default=5, help="alternating runs per side (default 5)")
    bench.add_argument("--tokens", type=int, default=128, help="tokens to decode per run (default 128)")
    bench.set_defaults(run=run)


def run(args: argparse.Namespace, session: Session) -> int:
    from app.runtime.hardware import this_machine
    from app.runtime.measurements import FileMeasurementStore

    store = FileMeasurementStore.default(this_machine)
    if args.list_measurements:
        return _list_measurements(session, store)
    if args.forget is not None:
        return _forget_measurements(session, store, args.forget or None)
    from app.runtime.bench_suites import SUITES

    report = SUITES[args.suite](args, store)
    text = json.dumps(report, indent=2)
    session.console.out.write(text + "\n")
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return EXIT_OK


def _list_measurements(session: Session, store: Any) -> int:
    """`hearth bench --list`: one line per saved measurement, and this machine."""
    out = session.console.out
    entries = store.entries()
    out.write(f"this machine: {store.machine.summary()}\n")
    if not entries:
        out.write("no measurements saved; `hearth bench` (runtime, kv, kernels) takes them\n")
        return EXIT_OK
    for e in entries:
        state = f"stale ({', '.join(e.why_stale)} differ)" if e.stale else "current"
        out.write(f"{e.kind:<16} {e.key or '-':<12} {e.value_summary(60):<60}  {e.taken[:10]}  {state}\n")
        if e.stale:
            out.write(f"{'':<16} taken on: {e.machine.summary()}\n")
    return EXIT_OK


def _forget_measurements(session: Session, store: Any, kind: str | None) -> int:
    """`hearth bench --forget [KIND]`: clear every measurement, or those of one kind."""
    from app.runtime.measurements import KINDS

    if kind is not None and kind not in KINDS:
        session.console.fail(f"no measurement kind {kind!r}; the kinds are {', '.join(KINDS)}")
        return EXIT_USAGE
    removed = store.forget(kind)
    session.console.out.write(f"forgot {removed} measurement{'s' if removed != 1 else ''}{f' of kind {kind}' if kind else ''}\n")
    return EXIT_OK
