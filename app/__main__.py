"""Entry point of `hearth` and `python -m app`: the studio, the worker, or a CLI subcommand.

Kept tiny on purpose: the GUI's start path must not import the runtime's heavy libraries, and the
worker (``--worker``) and child-job (``--child ROLE``) flags are routed before anything else is
imported. A frozen build has no ``python -m``: the launcher re-runs this executable with them.
"""

from __future__ import annotations

import sys
from typing import Any


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if getattr(sys, "frozen", False):
        _frozen_start_up()
    from app.runtime.launcher import CHILD_FLAG, WORKER_FLAG

    if args[:1] == [WORKER_FLAG]:
        from app.runtime.worker import main as worker_main

        install_http_front()  # the worker serves the API for the studio
        return worker_main()
    if args[:1] == [CHILD_FLAG] and len(args) == 2:
        return _child(args[1])
    if not args or args[0].startswith("--gui") or args[0] == "--self-test":
        from app.ui.app import main as gui_main

        return gui_main(args)
    from app.cli import main as cli_main

    install_http_front()  # `hearth serve` runs the server in the CLI's own runtime
    return cli_main(args)


def install_http_front() -> None:
    """Hand the HTTP server (app.server, a client of the runtime) to this process's runtime, which
    starts it on `server.start` without importing it: this is the one place that knows both.
    Light on purpose: it runs before the CLI routes library logs to its log file."""
    from app.runtime.fronts import use_front

    def front() -> Any:
        from app.server.front import HttpFront  # FastAPI and uvicorn only when a server starts

        return HttpFront()

    use_front(front)


def _child(role: str) -> int:
    """``--child ROLE``: one child job (`app.runtime.childjob`); each role's entry is imported only here."""
    from app.runtime.childjob import serve

    if role == "dry-run":
        from app.runtime.planner.dryrun import child_entry as entry
    elif role == "convert":
        from app.runtime.quantize.child import convert_entry as entry
    elif role == "quantize":
        from app.runtime.quantize.child import quantize_entry as entry
    elif role == "imatrix":
        from app.runtime.quantize.imatrix import imatrix_entry as entry
    elif role == "finetune":
        from app.runtime.finetune.child import train_entry as entry
    elif role == "selftest-child":  # the child-job helper's own tests
        from app.runtime.childjob import selftest_entry as entry
    else:
        print(f"hearth: unknown child role {role!r}", file=sys.stderr)
        return 2
    code = serve(entry, role)
    sys.stdout.flush()
    sys.stderr.flush()
    import os

    os._exit(code)  # not a normal exit: interpreter shutdown would wait on the thread reading stdin


def _frozen_start_up() -> None:
    """What a PyInstaller build needs before anything else runs.

    - multiprocessing's spawned children re-run this executable: freeze_support() turns them into
      the child they should be instead of a second studio (datasets and torch may spawn).
    - The current folder may be the bundle (a double-click on some desktops): nothing may be
      written there, so relative paths are pointed at the user's home instead.
    - A windowed build on Windows has no console: sys.stdout/sys.stderr are None, and a print
      would raise. They go to os.devnull; the log file has everything.
    """
    import multiprocessing
    import os

    multiprocessing.freeze_support()
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle and os.path.abspath(os.getcwd()).startswith(os.path.abspath(os.path.dirname(sys.executable))):
        os.chdir(os.path.expanduser("~"))
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 (lives as long as the process)


if __name__ == "__main__":
    sys.exit(main())
