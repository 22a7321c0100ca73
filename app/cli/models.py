"""`hearth models`: the library (ls, rm) and the Hugging Face Hub (search, files, pull)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from app.cli.console import ANSWER_CHARS, read_line
from app.cli.progress import fmt_bytes
from app.cli.runner import EXIT_FAILED, EXIT_OK, Session
from app.runtime.protocol import Method


def add_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="the model library and the Hugging Face Hub: ls, search, files, pull, rm")
    models.set_defaults(run=run_ls)
    msub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    msub.add_parser("ls", help="list the models in the library (the default)").set_defaults(run=run_ls)
    search = msub.add_parser("search", help="search the Hub for GGUF models")
    search.add_argument("query")
    search.add_argument("--sort", choices=("downloads", "likes", "updated"), default="downloads")
    search.add_argument("--limit", type=int, default=20)
    search.set_defaults(run=run_search)
    files = msub.add_parser("files", help="a Hub repository's variants with their sizes and fit on this machine")
    files.add_argument("repo", help="owner/name on the Hub")
    files.set_defaults(run=run_files)
    pull = msub.add_parser("pull", help="download a model into the library (Ctrl-C pauses; pull again to resume)")
    pull.add_argument("repo", help="owner/name on the Hub")
    pull.add_argument("file", nargs="?", help="the file (default: the variant recommended for this machine)")
    pull.set_defaults(run=run_pull)
    rm = msub.add_parser("rm", help="delete a model file from the library")
    rm.add_argument("name", help="library id, name or path")
    rm.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    rm.set_defaults(run=run_rm)


def run_ls(args: argparse.Namespace, session: Session) -> int:
    models = session.call(Method.MODELS_LIST)["models"]
    if not models:
        session.console.say("The library is empty. Run `make install` to add the embedded model.")
        return EXIT_FAILED
    out = session.console.out
    out.write(f"{'ID':40} {'ARCH':10} {'PARAMS':>8} {'QUANT':8} {'SIZE':>9} {'CTX':>6}  SOURCE\n")
    for m in models:
        params = f"{m['parameters'] / 1e6:>7.0f}M" if m["parameters"] else f"{'-':>8}"
        size = f"{m['file_size'] / 2**20:>7.1f}MB" if m["file_size"] else f"{'-':>9}"
        out.write(f"{m['id']:40} {m['architecture'] or '-':10} {params} {m['quantization'] or '-':8} {size} {m['context_length'] or '-':>6}  "
                  f"{m['source']}: {m['path']}\n")
    return EXIT_OK


def run_search(args: argparse.Namespace, session: Session) -> int:
    found = session.call(Method.HUB_SEARCH, {"query": args.query, "sort": args.sort, "limit": args.limit})["models"]
    if not found:
        session.console.say(f"No GGUF text-generation models match {args.query!r}.")
        return EXIT_FAILED
    out = session.console.out
    out.write(f"{'REPOSITORY':60} {'DOWNLOADS':>10} {'LIKES':>6}  UPDATED\n")
    for m in found:
        out.write(f"{m['id']:60} {m['downloads']:>10,} {m['likes']:>6,}  {(m['last_modified'] or '')[:10]}{'  (gated)' if m['gated'] else ''}\n")
    return EXIT_OK


def run_files(args: argparse.Namespace, session: Session) -> int:
    listing = session.call(Method.HUB_FILES, {"repo_id": args.repo})
    if not listing["variants"]:
        session.console.say(f"{args.repo} has no GGUF files.")
        return EXIT_FAILED
    out = session.console.out
    out.write(f"{'VARIANT':12} {'SIZE':>10}  {'ON THIS MACHINE':32} FILES\n")
    for v in listing["variants"]:
        here = " [downloaded]" if v["downloaded"] else f" [paused at {fmt_bytes(v['partial_bytes'])}]" if v["partial_bytes"] else ""
        out.write(f"{v['name']:12} {fmt_bytes(v['size']):>10}  {v['fit_text']:32} {', '.join(v['files'])}{here}\n")
    recommended = next((v for v in listing["variants"] if v.get("recommended")), None)
    if recommended:
        out.write(f"\nRecommended: {recommended['fit_reason']}\n")
    return EXIT_OK


def run_pull(args: argparse.Namespace, session: Session) -> int:
    again = f"hearth models pull {args.repo}{' ' + args.file if args.file else ''}"
    done = session.run(Method.HUB_DOWNLOAD, {"repo_id": args.repo, "filename": args.file}, resume=again)
    for path in done["paths"]:
        session.console.out.write(f"{path}\n")
    return EXIT_OK


def run_rm(args: argparse.Namespace, session: Session) -> int:
    if not args.yes:
        model = session.call(Method.MODELS_DETAILS, {"model": args.name})["model"]
        if model.get("source") == "embedded":  # refused before the question, not after the person said yes
            session.console.fail(f"{model['name']} is Hearth's embedded model; it cannot be deleted.")
            return EXIT_FAILED
        out = session.console.out
        out.write(f"Delete {model['name']} ({fmt_bytes(model['file_size'])}) at {model['path']}? [y/N] ")
        out.flush()
        answer = read_line(sys.stdin, limit=ANSWER_CHARS)  # bounded ("" at the end of input: no)
        if answer.strip().lower() not in ("y", "yes"):
            session.console.say("Nothing deleted (pass --yes to delete without asking).")
            return EXIT_FAILED
        target = str(model["path"])
    else:
        target = args.name
    done = session.call(Method.MODELS_DELETE, {"model": target})
    session.console.out.write(f"Deleted {done['deleted']}; {fmt_bytes(done['freed'])} freed.\n")
    return EXIT_OK
