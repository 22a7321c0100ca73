"""`hearth docs`: document collections from the command line (the ``docs.*`` protocol methods).

    hearth docs add NAME PATH...      index files and folders (Ctrl-C pauses; `add NAME` continues)
    hearth docs ls                    the collections, their size and what was skipped
    hearth docs rm NAME [PATH...]     delete a collection's index, or take sources out of it
    hearth docs search NAME "query"   the ranked chunks with file, page/line and score
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from app.cli.runner import EXIT_FAILED, EXIT_OK, Session, Stopped
from app.runtime.protocol import Method


def add_parser(sub: Any) -> None:
    """The ``docs`` subcommand and its own subcommands, on the main parser's subparsers."""
    docs = sub.add_parser("docs", help="document collections to chat with: add, ls, rm, search")
    docs.set_defaults(run=_ls)
    dsub = docs.add_subparsers(dest="docs_command", metavar="SUBCOMMAND")
    add = dsub.add_parser("add", help="index files and folders into a collection (made when new; Ctrl-C pauses, run again to continue)")
    add.add_argument("name", help="the collection's name (letters, digits, '.', '_', '-')")
    add.add_argument("paths", nargs="*", metavar="PATH", help="files and folders (none: re-index the collection's sources)")
    add.add_argument("--max-file-mb", type=int, help="skip files bigger than this (default: the setting docs_max_file_mb, 64)")
    add.add_argument("--json", action="store_true", help="print the report as JSON")
    add.set_defaults(run=_add)
    ls = dsub.add_parser("ls", help="list the collections (the default)")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(run=_ls)
    rm = dsub.add_parser("rm", help="delete a collection's index (never your files), or take sources out of it")
    rm.add_argument("name")
    rm.add_argument("paths", nargs="*", metavar="PATH", help="sources to take out (none: the whole collection)")
    rm.set_defaults(run=_rm)
    search = dsub.add_parser("search", help="the best-matching chunks for a query, with file, page/line and score")
    search.add_argument("name")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=5, help="how many chunks (default 5)")
    search.add_argument("--json", action="store_true", help="print the hits as JSON (with their whole text)")
    search.set_defaults(run=_search)


def _add(args: argparse.Namespace, session: Session) -> int:
    params: dict[str, Any] = {"name": args.name, "paths": list(args.paths)}
    if args.max_file_mb is not None:
        params["max_file_mb"] = args.max_file_mb
    try:
        report = session.run(Method.DOCS_ADD, params, resume=f"hearth docs add {args.name}")
    except Stopped as stopped:  # what was indexed stays; say what was skipped on the way
        _print_skipped(session, stopped.data.get("skipped") or [])
        raise
    _print_report(session, report, as_json=args.json)
    return EXIT_OK


def _print_report(session: Session, report: dict[str, Any], *, as_json: bool) -> None:
    out = session.console.out
    if as_json:
        out.write(json.dumps(report, indent=2) + "\n")
        return
    mb = report["bytes_read"] / 2**20
    out.write(f"{report['collection']}: {len(report['indexed'])} file(s) indexed ({mb:.1f} MB in {report['seconds']:.1f} s), "
              f"{report['unchanged']} unchanged, {len(report['removed'])} removed; {report['files']} file(s), {report['chunks']} chunks in all.\n")
    if report.get("vectors"):
        out.write(f"{report['vectors']} chunk(s) embedded with {report['embedder']}.\n")
    _print_skipped(session, report["skipped"])


def _print_skipped(session: Session, skipped: list[dict[str, Any]]) -> None:
    if skipped:
        session.console.say(f"Skipped {len(skipped)}:")
        for s in skipped:
            session.console.say(f"  {s['path']}: {s['reason']}")


def _ls(args: argparse.Namespace, session: Session) -> int:
    rows = session.call(Method.DOCS_LIST)["collections"]
    out = session.console.out
    if getattr(args, "json", False):  # absent when `hearth docs` ran without a subcommand
        out.write(json.dumps(rows, indent=2) + "\n")
        return EXIT_OK
    if not rows:
        session.console.say("No document collections yet. `hearth docs add NAME PATH...` makes one.")
        return EXIT_OK
    out.write(f"{'NAME':24} {'FILES':>6} {'CHUNKS':>7} {'TEXT':>9} {'SKIPPED':>7}  SOURCES\n")
    for r in rows:
        text = f"{r['chars'] / 1e6:.1f}M ch" if r["chars"] >= 1e5 else f"{r['chars'] / 1e3:.1f}k ch"
        out.write(f"{r['name']:24} {r['files']:>6} {r['chunks']:>7} {text:>9} {len(r['skipped']):>7}  {', '.join(r['sources'])}\n")
    return EXIT_OK


def _rm(args: argparse.Namespace, session: Session) -> int:
    done = session.call(Method.DOCS_REMOVE, {"name": args.name, "paths": list(args.paths)})
    if done["deleted"]:
        session.console.out.write(f"Deleted the collection {done['name']} (its index only; your files are untouched).\n")
    else:
        session.console.out.write(f"Took {len(done['sources_removed'])} source(s) out of {done['name']}; {done['files_removed']} file(s) left the index.\n")
    return EXIT_OK


def _search(args: argparse.Namespace, session: Session) -> int:
    found = session.call(Method.DOCS_SEARCH, {"name": args.name, "query": args.query, "k": args.k})
    out = session.console.out
    if args.json:
        out.write(json.dumps(found, indent=2) + "\n")
        return EXIT_OK
    if not found["hits"]:
        session.console.say(f"Nothing in {args.name} matches {args.query!r}.")
        return EXIT_FAILED
    for rank, hit in enumerate(found["hits"], start=1):
        section = f" ({hit['heading']})" if hit["heading"] else ""
        out.write(f"{rank}. {hit['score']:.3f}  {hit['path']}, {hit['location']}{section}\n")
        snippet = " ".join(hit["text"].split())
        out.write(f"   {snippet[:200]}{'...' if len(snippet) > 200 else ''}\n")
    return EXIT_OK
