"""Entry point of `hearth` and `python -m app`: the studio, the worker, or a CLI subcommand.

Kept tiny on purpose: the GUI's start path must not import the runtime's heavy libraries, and the
worker and dry-run flags are routed before anything else is imported.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    from app.runtime.launcher import DRY_RUN_FLAG, WORKER_FLAG

    if args[:1] == [WORKER_FLAG]:
        from app.runtime.worker import main as worker_main

        return worker_main()
    if args[:1] == [DRY_RUN_FLAG]:
        from app.runtime.planner.dryrun import child_main

        return child_main()
    if not args or args[0].startswith("--gui"):
        from app.ui.app import main as gui_main

        return gui_main(args)
    from app.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
