"""`hearth` on the command line: each subcommand is requests to the runtime, run one way.

One module per command group (chat, plan and hardware, models, docs, quantize, finetune, serve,
bench); each adds its parser (``add_parser``) and runs with a `Session`, whose ``run`` is the one
runner (`app.cli.runner`): the in-process client, a progress bar on stderr, Ctrl-C, and one
``hearth: ...`` line on failure. `main` owns the rest: the streams and the log (`app.cli.console`),
the exit codes, a closed pipe and an interrupted prompt.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from app import __version__
from app.cli.runner import EXIT_FAILED, EXIT_OK, EXIT_STOPPED, EXIT_USAGE, Session, Stopped, UsageError

log = logging.getLogger(__name__)

DESCRIPTION = """Hearth: a desktop studio for local large language models.

Run `hearth` with no arguments to open the studio window."""

EPILOG = f"""Ctrl-C while a job runs: the first press pauses a job that can resume (models pull,
docs add, finetune: the last line says which command continues it) and cancels any other;
press again to cancel the paused one instead; once more leaves without waiting.

Exit codes: {EXIT_OK} done; {EXIT_FAILED} failed (one `hearth: ...` line says why) or found nothing;
{EXIT_USAGE} wrong arguments; {EXIT_STOPPED} cancelled or paused (Ctrl-C).
A closed output pipe (`hearth chat ... | head -1`) ends quietly with {EXIT_OK}.

Logs go to {{log}}; -v shows them (and libraries' warnings) on stderr too."""


def _command_modules() -> list[object]:
    from app.cli import bench, chat, docs, finetune, models, plan, quantize, serve

    return [chat, plan, models, docs, quantize, finetune, serve, bench]


def build_parser() -> argparse.ArgumentParser:
    from app.cli.console import LOG_FILE
    from app.paths import paths

    parser = argparse.ArgumentParser(
        prog="hearth", description=DESCRIPTION, epilog=EPILOG.format(log=paths().logs / LOG_FILE),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hearth {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the log (and libraries' warnings) on stderr too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        module.add_parser(sub)  # type: ignore[attr-defined]
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns the exit code (see EPILOG)."""
    from app.cli.console import decode_argv, open_console

    parser = build_parser()
    try:
        argv = decode_argv(sys.argv[1:] if argv is None else list(argv))
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (argparse said why)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    except BrokenPipeError:  # `hearth --help | head -1`
        _stdout_to_devnull()
        return EXIT_OK
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    console = open_console(verbose=args.verbose)
    session = Session(console)
    try:
        log.info("hearth %s: %s", __version__, " ".join(argv))
        code = _run(args, session, parser)
        console.out.flush()
        return code
    except BrokenPipeError:
        _stdout_to_devnull()
        return EXIT_OK
    finally:
        try:
            session.close()
        finally:
            console.close()


def _run(args: argparse.Namespace, session: Session, parser: argparse.ArgumentParser) -> int:
    from app.runtime.protocol import RuntimeFailure

    console = session.console
    try:
        return int(args.run(args, session))
    except RuntimeFailure as exc:
        console.fail(exc.message)
        return EXIT_FAILED
    except Stopped as stopped:
        console.fail(stopped.message)
        return EXIT_STOPPED
    except UsageError as exc:
        parser.print_usage(console.err)
        console.fail(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:  # at a prompt, or before a job started: nothing to stop
        console.say()
        return EXIT_STOPPED
    except BrokenPipeError:
        raise
    except Exception as exc:  # a bug in the CLI itself: one line here, the traceback in the log
        log.exception("hearth %s failed", args.command)
        where = f" (details in {console.log_file})" if console.log_file else ""
        console.fail(f"internal error: {exc!r}{where}")
        return EXIT_FAILED


def _stdout_to_devnull() -> None:
    """After a closed pipe: point fd 1 at /dev/null so the interpreter's last flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
