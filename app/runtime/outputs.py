"""Where a job may write: an output folder, checked before any work starts.

A quantization or a fine-tune given an output folder used to find out that it could not write
there only when it first wrote, after minutes of work, as an "Internal error" with a traceback
(``[Errno 17] File exists`` for a file given as the folder). `output_folder_problem` says it in one
sentence at once; the CLI calls it before it submits anything, and the jobs call it again (through
`check_output_folder`) for every other client.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from app.runtime.protocol import ErrorKind, RuntimeFailure

_REASONS = {errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EROFS: "a read-only disk",
            errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up"}


def output_folder_problem(path: str | Path, *, what: str = "the results", new: bool = False) -> str | None:
    """Why ``path`` cannot be the folder ``what`` is written to, or None when it can.

    It can when it is a folder that takes a new file, or when it is missing and the nearest
    folder above it does (it is made when the job starts). ``new``: it must also hold nothing yet
    (a fine-tune's run folder, where another run's checkpoints would be mixed with this one's).
    Writing is tried for real (a temporary file, removed at once), because permission bits do
    not tell: root may write to a folder with mode 0555 but not to ``/proc``, nobody to a
    read-only mount.
    """
    folder = Path(os.path.expanduser(str(path)))
    if folder.is_dir():
        if new and any(folder.iterdir()):
            return f"{folder} already holds files; give a new or empty folder for {what}."
        return _cannot_write(folder, folder, what)
    if folder.exists() or folder.is_symlink():
        return f"{folder} is a file, not a folder; give a folder for {what} (it is made if it is missing)."
    above = folder.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        return f"{folder} cannot be made: {above} is a file, not a folder."
    return _cannot_write(above, folder, what)


def check_output_folder(path: str | Path, *, what: str = "the results", new: bool = False) -> None:
    """Raise `RuntimeFailure` (invalid params) with `output_folder_problem`'s sentence, if any."""
    problem = output_folder_problem(path, what=what, new=new)
    if problem is not None:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, problem)


def _cannot_write(existing: Path, folder: Path, what: str) -> str | None:
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        reason = _REASONS.get(exc.errno or 0, "it takes no new files")
        where = "" if existing == folder else f" ({existing}: {reason})"
        return f"{what[:1].upper()}{what[1:]} cannot be written to {folder}{where or f': {reason}'}; choose another folder."
    return None
