"""Moving a chat file out of the way without losing a byte of it.

A damaged history, or the history a restored backup replaces, is never deleted: it is renamed
beside the original with what happened and when in its name, together with the `-wal`, `-shm`
and `-journal` files SQLite keeps beside it (the last commits may live only in the `-wal`).
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from app.chats.schema import sidecars


def move_aside(path: Path, why: str, *, now: datetime) -> Path:
    """Rename `path` (and its sidecars) to `<name>.<why>-<YYYYmmdd-HHMMSS>`; returns the new path.

    The sidecars go first: a `-wal` left beside a new file of the old name would be replayed
    into it. A name already taken gets a counter, so nothing is ever overwritten.
    """
    stamp = now.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.{why}-{stamp}")
    count = 1
    while aside.exists() or any(s.exists() for s in sidecars(aside)):
        count += 1
        aside = path.with_name(f"{path.name}.{why}-{stamp}-{count}")
    for old, new in zip(sidecars(path), sidecars(aside), strict=True):
        if old.exists():
            os.replace(old, new)
    os.replace(path, aside)
    return aside
