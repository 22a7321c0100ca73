"""The one way to start a worker process, from a venv or from a frozen (PyInstaller) build.

A frozen build has no Python interpreter to run ``-m``: its executable is Hearth itself, so the
worker is the same executable with the ``--worker`` flag. In a venv the interpreter runs the same
entry point (``app.__main__``) with the same flag. Either way `app.__main__` routes ``--worker``
to `app.runtime.worker.main` before importing anything heavy.
"""

from __future__ import annotations

import sys

WORKER_FLAG = "--worker"


def worker_command() -> list[str]:
    if getattr(sys, "frozen", False):
        return [sys.executable, WORKER_FLAG]
    return [sys.executable, "-m", "app", WORKER_FLAG]
