"""`hearth quantize`: smaller versions of a model (GGUF types, torch int8/int4), with their measured cost."""

from __future__ import annotations

import argparse
import json
from typing import Any

from app.cli.progress import fmt_bytes
from app.cli.runner import EXIT_OK, Session
from app.runtime.protocol import Method


def add_parser(sub: Any) -> None:
    quantize = sub.add_parser("quantize", help="quantize a model (GGUF types through llama.cpp, torch int8/int4) and measure the results")
    quantize.add_argument("model", help="library id, name, GGUF path or Hugging Face folder")
    quantize.add_argument("--to", required=True, help="comma-separated targets, e.g. Q4_K_M,Q8_0 or int8 (`--to list` shows them all for this model)")
    quantize.add_argument("--eval", action="store_true", help="measure perplexity, KL divergence and speed of each result against the source")
    quantize.add_argument("--eval-tokens", type=int, help="held-out tokens to score (default 2048)")
    quantize.add_argument("--imatrix", help="an importance matrix file from llama-imatrix (GGUF format)")
    quantize.add_argument("--output", help="folder for the results (default: the library's models folder)")
    quantize.add_argument("--json", action="store_true", help="print the whole report as JSON")
    quantize.set_defaults(run=run)


def run(args: argparse.Namespace, session: Session) -> int:
    if args.to.strip().lower() == "list":
        return _list_targets(args, session)
    params = {"model": args.model, "targets": [t for t in args.to.split(",") if t.strip()], "evaluate": args.eval,
              "output_dir": args.output, "imatrix": args.imatrix, "eval_tokens": args.eval_tokens}
    report = session.run(Method.QUANTIZE_RUN, params)  # Ctrl-C cancels: the job removes what it made
    _print_report(session, report, as_json=args.json)
    return EXIT_OK


def _list_targets(args: argparse.Namespace, session: Session) -> int:
    listing = session.call(Method.QUANTIZE_TARGETS, {"model": args.model})
    out = session.console.out
    if args.json:
        out.write(json.dumps(listing, indent=2) + "\n")
        return EXIT_OK
    for t in listing["targets"]:
        size = fmt_bytes(t["expected_size"]) if t.get("expected_size") else "-"
        out.write(f"{t['name']:10} {t['kind']:6} {size:>10}  {t['description']}{'  (needs --imatrix)' if t['needs_imatrix'] else ''}\n")
    if listing.get("recommended"):
        out.write(f"\nRecommended here: {listing['recommended']['name']}: {listing['recommended_reason']}\n")
    for warning in listing.get("warnings", []):
        session.console.say(f"warning: {warning}")
    return EXIT_OK


def _print_report(session: Session, report: dict[str, Any], *, as_json: bool) -> None:
    out = session.console.out
    if as_json:
        out.write(json.dumps(report, indent=2) + "\n")
        return
    for warning in report.get("warnings", []):
        session.console.say(f"warning: {warning}")
    ref = report.get("reference")
    out.write(f"{'TARGET':10} {'SIZE':>10} {'PPL':>9} {'Δ PPL':>8} {'KL':>8} {'TOP-1':>6} {'TOK/S':>7}  PATH\n")
    if ref:
        out.write(f"{'source':10} {fmt_bytes(ref['file_size']):>10} {ref['perplexity']:>9.3f} {'':>8} {'':>8} {'':>6} {ref['decode_tps']:>7.1f}  {ref['label']}\n")
    for row in report["results"]:
        mark = " *" if row.get("recommended") else ""

        def num(key: str, fmt: str, row: dict[str, Any] = row) -> str:
            value = row.get(key)
            return format(value, fmt) if isinstance(value, (int, float)) else "-"

        out.write(f"{row['target'] + mark:10} {fmt_bytes(row['file_size']):>10} {num('perplexity', '.3f'):>9} {num('ppl_change_pct', '+.2f'):>7}% "
                  f"{num('kl_mean', '.4f'):>8} {num('top1_agreement', '.1%'):>6} {num('decode_tps', '.1f'):>7}  {row['path']}\n")
    if report.get("recommended"):
        out.write(f"\n* recommended for this computer: {report['recommended_reason']}\n")
