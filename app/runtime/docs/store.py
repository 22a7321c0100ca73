"""Named collections in the user's data folder: ``<data>/docs/<name>.sqlite3``, one index each."""

from __future__ import annotations

import re
from pathlib import Path

from app.runtime.docs.index import Collection
from app.runtime.protocol import ErrorKind, RuntimeFailure

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SUFFIX = ".sqlite3"


def folder() -> Path:
    from app.paths import paths

    return paths().data / "docs"


def check_name(name: str) -> str:
    """A collection name is also a file name: letters, digits, '.', '_' and '-', up to 64."""
    if not NAME.match(name):
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS,
                             f"{name!r} is not a collection name: use letters, digits, '.', '_' and '-' (up to 64, "
                             "starting with a letter or digit)")
    return name


def index_path(name: str) -> Path:
    return folder() / f"{check_name(name)}{SUFFIX}"


def names() -> list[str]:
    where = folder()
    if not where.is_dir():
        return []
    return sorted(p.name[: -len(SUFFIX)] for p in where.glob(f"*{SUFFIX}") if NAME.match(p.name[: -len(SUFFIX)]))


def exists(name: str) -> bool:
    return index_path(name).is_file()


def open_collection(name: str, *, create: bool = False) -> Collection:
    """The collection ``name``; MODEL_NOT_FOUND-like INVALID_PARAMS when it does not exist and
    ``create`` is False (a typo must not make an empty collection)."""
    path = index_path(name)
    if not create and not path.is_file():
        known = ", ".join(names()) or "none yet"
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"There is no document collection {name!r} (collections: {known}). "
                             f"`hearth docs add {name} PATH...` makes it.")
    return Collection(path, name)


def remove(name: str) -> bool:
    """Delete a collection's index (never the documents themselves); False when there was none."""
    path = index_path(name)
    found = path.is_file()
    for extra in ("", "-wal", "-shm"):
        Path(f"{path}{extra}").unlink(missing_ok=True)
    return found
