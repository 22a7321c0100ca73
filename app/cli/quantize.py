"""`hearth quantize`: smaller versions of a model (GGUF types, torch int8/int4), with their measured cost;
`hearth imatrix`: the importance matrix that weighs their rounding."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from app.cli.progress import fmt_bytes
from app.cli.runner import EXIT_OK, Session
from app.runtime.outputs import check_output_folder
from app.runtime.protocol import Method


def add_parser(sub: Any) -> None:
    quantize = sub.add_parser("quantize", help="quantize a model (GGUF types through llama.cpp, torch int8/int4) and measure the results")
    quantize.add_argument("model", help="library id, name, GGUF path or Hugging Face folder")
    quantize.add_argument("--to", required=True, help="comma-separated targets, e.g. Q4_K_M,Q8_0 or int8 (`--to list` shows them all for this model)")
    quantize.add_argument("--eval", action="store_true", help="measure perplexity, KL divergence and speed of each result against the source")
    quantize.add_argument("--eval-tokens", type=int, help="held-out tokens to score (default 2048)")
    quantize.add_argument("--imatrix", default="auto", metavar="auto|none|FILE",
                          help="importance matrix: auto (default: Hearth measures one, once per model, for every type of 4 bits or less), "
                          "none (plain types; IQ1/IQ2 and Q2_K_S are refused), or a file from `hearth imatrix` or llama-imatrix (GGUF or .dat)")
    quantize.add_argument("--torch-method", choices=("gptq", "rtn"), default="gptq",
                          help="how the torch int8/int4 targets are made: GPTQ (default) or round to nearest")
    quantize.add_argument("--calibration", metavar="FILE", help="calibration text for the importance matrix and GPTQ (default: a shipped public-domain text)")
    quantize.add_argument("--calibration-chunks", type=int, metavar="N", help="512-token chunks of calibration text (default 8 for the importance matrix, 16 for GPTQ)")
    quantize.add_argument("--output", help="folder for the results (default: the library's models folder)")
    quantize.add_argument("--json", action="store_true", help="print the whole report as JSON")
    quantize.set_defaults(run=run)

    imatrix = sub.add_parser("imatrix", help="measure a model's importance matrix (llama-imatrix's GGUF format), for quantizing with it")
    imatrix.add_argument("model", help="library id, name, GGUF path or Hugging Face folder")
    imatrix.add_argument("--data", metavar="FILE", help="calibration text (default: a shipped public-domain text, not the one quantize --eval scores)")
    imatrix.add_argument("--chunks", type=int, metavar="N", help="512-token chunks of it to run (default 8)")
    imatrix.add_argument("-o", "--output", required=True, metavar="FILE", help="the importance matrix file to write")
    imatrix.add_argument("--json", action="store_true", help="print the result as JSON")
    imatrix.set_defaults(run=run_imatrix)


def run(args: argparse.Namespace, session: Session) -> int:
    if args.to.strip().lower() == "list":
        return _list_targets(args, session)
    if args.output:  # before any work: a wrong folder is one sentence now, not a traceback after the conversion
        check_output_folder(args.output, what="the quantized models")
    params = {"model": args.model, "targets": [t for t in args.to.split(",") if t.strip()], "evaluate": args.eval,
              "output_dir": args.output, "imatrix": _imatrix_arg(args.imatrix), "eval_tokens": args.eval_tokens,
              "torch_method": args.torch_method, "calibration": args.calibration, "calibration_chunks": args.calibration_chunks}
    report = session.run(Method.QUANTIZE_RUN, params)  # Ctrl-C cancels: the job removes what it made
    _print_report(session, report, as_json=args.json)
    return EXIT_OK


def run_imatrix(args: argparse.Namespace, session: Session) -> int:
    """`hearth imatrix MODEL -o FILE`: a child job with a progress bar; Ctrl-C cancels and leaves no file."""
    result = session.run(Method.QUANTIZE_IMATRIX, {"model": args.model, "out": str(Path(args.output).expanduser().absolute()),
                                                   "data": args.data, "chunks": args.chunks})
    if args.json:
        session.console.out.write(json.dumps(result, indent=2) + "\n")
    else:
        session.console.out.write(f"{result['out']}: {result['entries']} weights measured on {result['tokens']:,} tokens "
                                  f"({result['chunks']} chunks of {result['dataset']}) in {result['seconds']:.0f} s\n"
                                  f"Use it: hearth quantize {args.model} --to IQ2_XS --imatrix {result['out']}\n")
    return EXIT_OK


def _imatrix_arg(value: str | None) -> str:
    """auto and none as they are; anything else is a file, made absolute (the worker may run elsewhere)."""
    if value is None or value.strip().lower() in ("auto", "none"):
        return (value or "auto").strip().lower()
    return str(Path(value).expanduser().absolute())


def _list_targets(args: argparse.Namespace, session: Session) -> int:
    listing = session.call(Method.QUANTIZE_TARGETS, {"model": args.model, "imatrix": _imatrix_arg(args.imatrix)})
    out = session.console.out
    if args.json:
        out.write(json.dumps(listing, indent=2) + "\n")
        return EXIT_OK
    for t in listing["targets"]:
        size = fmt_bytes(t["expected_size"]) if t.get("expected_size") else "-"
        how = "  (needs an importance matrix: --imatrix auto or FILE)" if not t.get("available", True) else "  [importance matrix]" if t.get("imatrix") else ""
        out.write(f"{t['name']:10} {t['kind']:6} {size:>10}  {t['description']}{how}\n")
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
    out.write(f"{'TARGET':10} {'MADE BY':18} {'SIZE':>10} {'PPL':>9} {'Δ PPL':>8} {'KL':>8} {'TOP-1':>6} {'TOK/S':>7}  PATH\n")
    if ref:
        out.write(f"{'source':10} {'':18} {fmt_bytes(ref['file_size']):>10} {ref['perplexity']:>9.3f} {'':>8} {'':>8} {'':>6} {ref['decode_tps']:>7.1f}  {ref['label']}\n")
    for row in report["results"]:
        mark = " *" if row.get("recommended") else ""

        def num(key: str, fmt: str, row: dict[str, Any] = row) -> str:
            value = row.get(key)
            return format(value, fmt) if isinstance(value, (int, float)) else "-"

        out.write(f"{row['target'] + mark:10} {made_by(row):18} {fmt_bytes(row['file_size']):>10} {num('perplexity', '.3f'):>9} {num('ppl_change_pct', '+.2f'):>7}% "
                  f"{num('kl_mean', '.4f'):>8} {num('top1_agreement', '.1%'):>6} {num('decode_tps', '.1f'):>7}  {row['path']}\n")
    if report.get("imatrix"):
        im = report["imatrix"]
        out.write(f"\nImportance matrix ({im.get('made', 'given')}): {im['path']}\n")
    if report.get("recommended"):
        out.write(f"\n* recommended for this computer: {report['recommended_reason']}\n")


def made_by(row: dict[str, Any]) -> str:
    """How a result was made, in a few words: llama.cpp with or without an importance matrix, GPTQ or rounding."""
    if row.get("kind") == "torch":
        return "GPTQ" if row.get("algorithm") == "gptq" else "round to nearest"
    return "llama.cpp + imatrix" if row.get("imatrix") else "llama.cpp"
