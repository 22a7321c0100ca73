"""The one way to start a worker process, from a venv or from a frozen (PyInstaller) build.

A frozen build has no Python interpreter to run ``-m``: its executable is Hearth itself, so the
worker is the same executable with the ``--worker`` flag. In a venv the interpreter runs the same
entry point (``app.__main__``) with the same flag. Either way `app.__main__` routes ``--worker``
to `app.runtime.worker.main` before importing anything heavy. The planner's dry run
(``--dry-run``, `app.runtime.planner.dryrun.child_main`) is started the same way: it runs
llama.cpp in a throw-away process, because a C abort there must not end the worker.
"""

from __future__ import annotations

import sys

WORKER_FLAG = "--worker"
DRY_RUN_FLAG = "--dry-run"


def worker_command() -> list[str]:
    if getattr(sys, "frozen", False):
        return [sys.executable, WORKER_FLAG]
    return [sys.executable, "-m", "app", WORKER_FLAG]


def dry_run_command() -> list[str]:
    """The planner's dry-run child: the same program as the worker, with ``--dry-run``."""
    if getattr(sys, "frozen", False):
        return [sys.executable, DRY_RUN_FLAG]
    return [sys.executable, "-m", "app", DRY_RUN_FLAG]
