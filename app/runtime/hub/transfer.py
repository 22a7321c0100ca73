"""One file from the Hub into a folder: resumable, cancellable, verified, retried.

huggingface_hub 2.4's ``hf_hub_download`` writes to a temporary file unique to each call and
deletes it on any failure, so a paused download or an app restart would start again from zero.
Hearth therefore calls the same lower-level pieces ``hf_hub_download`` uses, unmodified:
``hf_hub_url`` + ``get_hf_file_metadata`` (HEAD: commit, ETag, size, location) and ``http_get``
(GET with ``Range: bytes=<partial size>-``, which itself retries dropped connections and read
timeouts from where it stopped) into a partial file Hearth owns:
``<dest_dir>/.partial/<name>.<etag>.incomplete``. A pause of the job stops and keeps it (the
job ends as ``JobStopped(PAUSED)``); resume = call again; a cancel stops and removes it
(``JobStopped(CANCELLED)``), as ``discard_partial`` does for a paused one. A finished file is checked against the Hub's sha256 (git blob sha1
for small non-LFS files) and only then moved to ``<dest_dir>/<filename>``.

The read timeout is huggingface_hub's ``HF_HUB_DOWNLOAD_TIMEOUT`` (env var, read into
``huggingface_hub.constants`` at import; 10 s by default): a stalled server raises a read timeout
there, which ``http_get`` retries, and which Hearth retries again with backoff when ``http_get``
gives up.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, cast

from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import build_hf_headers

from app.runtime.hub.errors import NO_SPACE_KIND, HubUnreachable, hub_errors
from app.runtime.jobs import JobContext, JobStopped
from app.runtime.planner.memory import fmt_bytes
from app.runtime.protocol import ErrorKind, JobStatus, RuntimeFailure

log = logging.getLogger(__name__)

PARTIAL_DIR = ".partial"
DISK_MARGIN = 256 * 1024 * 1024  # left free after the download: the OS and the library need room too
RETRY_DELAYS: tuple[float, ...] = (2.0, 5.0, 15.0)  # Hearth's own retries, after http_get's
PROGRESS_INTERVAL = 0.25  # seconds between progress events


def stopped(ctx: JobContext, filename: str, *, dest_dir: Path, total: int | None) -> JobStopped:
    """How a stopped download ends: a pause keeps the partial file (the next ``download`` resumes
    it) and says how far it got; a cancel removes it."""
    if ctx.stop_requested is JobStatus.PAUSED:
        have = _size(dest_dir, filename)
        of = f" of {fmt_bytes(total)}" if total else ""
        return JobStopped(JobStatus.PAUSED, f"Download of {filename} paused at {fmt_bytes(have)}{of}; it resumes from there.",
                          filename=filename, downloaded=have, total=total)
    freed = discard_partial(filename, dest_dir=dest_dir)
    return JobStopped(JobStatus.CANCELLED, f"Download of {filename} cancelled; its partial file ({fmt_bytes(freed)}) was removed.",
                      filename=filename, downloaded=0, total=total)


class _Stop(Exception):
    """Raised from inside http_get's progress hook to stop the transfer; never leaves this module."""


def partial_path(dest_dir: Path, filename: str, etag: str) -> Path:
    return Path(dest_dir) / PARTIAL_DIR / f"{filename.replace('/', '--')}.{etag[:64]}.incomplete"


def discard_partial(filename: str, *, dest_dir: Path) -> int:
    """Cancel for good: delete every partial of ``filename`` in ``dest_dir``; returns bytes freed."""
    freed = 0
    for p in (Path(dest_dir) / PARTIAL_DIR).glob(f"{glob_escape(filename.replace('/', '--'))}.*.incomplete"):
        freed += p.stat().st_size
        p.unlink(missing_ok=True)
    return freed


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def download(
    repo_id: str,
    filename: str,
    *,
    dest_dir: Path,
    ctx: JobContext,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    retry_delays: Sequence[float] = RETRY_DELAYS,
    disk_margin: int = DISK_MARGIN,
) -> Path:
    """Download ``filename`` of ``repo_id`` to ``dest_dir/filename`` and return its path.

    Progress is the job's one record (stage ``download``: ``done``/``total`` bytes, ``eta_s``)
    plus ``filename`` and ``speed`` (bytes/s). A pause or cancel of ``ctx`` raises `JobStopped`
    (see `stopped`). ``token``: None uses huggingface_hub's saved token.
    """
    dest_dir = Path(dest_dir)
    target = dest_dir / filename
    url = hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint)
    headers = build_hf_headers(token=token)
    attempt = 0
    size: int | None = None
    while True:
        try:
            with hub_errors(f"downloading {filename}", repo_id):
                meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
            if meta.etag is None or meta.location is None:
                raise RuntimeFailure(ErrorKind.INTERNAL, f"The Hub sent no ETag for {filename}; cannot download it safely.")
            size = meta.size
            part = partial_path(dest_dir, filename, meta.etag)
            _forget_stale_partials(part, filename, dest_dir)
            have = part.stat().st_size if part.exists() else 0
            if meta.size is not None and have > meta.size:
                part.unlink()
                have = 0
            if attempt == 0:
                check_disk_space(dest_dir, (meta.size or 0) - have, filename, margin=disk_margin)
            with hub_errors(f"downloading {filename}", repo_id):
                _transfer(meta.location, part, have, meta.size, headers, filename, ctx)
            break
        except (HubUnreachable, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise  # a local disk error (full, read-only): retrying cannot help
            if ctx.cancelled:
                raise stopped(ctx, filename, dest_dir=dest_dir, total=size) from None
            if attempt >= len(retry_delays):
                if isinstance(exc, HubUnreachable):
                    raise
                raise HubUnreachable(f"downloading {filename} (after {attempt + 1} attempts)", exc) from None
            delay = retry_delays[attempt]
            attempt += 1
            log.warning("download of %s failed (%s); retry %d in %.1f s", filename, exc, attempt, delay)
            ctx.progress("download", message=f"Network error, retrying in {delay:.0f} s ({attempt}/{len(retry_delays)})",
                         filename=filename, retry=attempt)
            if ctx.wait(delay):
                raise stopped(ctx, filename, dest_dir=dest_dir, total=size) from None
    expected = _expected_hash(repo_id, filename, meta.commit_hash, meta.etag, endpoint=endpoint, token=token)
    ctx.progress("verify", message=f"Checking {filename}", filename=filename)
    _verify(part, expected, filename)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, target)
    ctx.progress("done", fraction=1.0, message=f"{filename} downloaded and verified", filename=filename, path=str(target))
    return target


def check_disk_space(folder: Path, needed: int, filename: str, *, margin: int = DISK_MARGIN) -> None:
    """Refuse before the first byte when ``needed`` bytes plus a margin do not fit in ``folder``."""
    probe = Path(folder)
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed + margin > free:
        raise RuntimeFailure(
            NO_SPACE_KIND,
            f"Not enough disk space for {filename}: it needs {fmt_bytes(needed)} (plus {fmt_bytes(margin)} to spare) "
            f"and {probe} has {fmt_bytes(free)} free. Free some space or choose another models folder.",
        )


class _Progress:
    """What http_get takes as ``tqdm_class``: a context manager with ``update(n)``.

    Raising from ``update`` stops the transfer before the chunk is written, so the partial file
    always holds whole, in-order bytes.
    """

    def __init__(self, *, tracker: _Tracker, total: int | None = None, initial: int = 0, **_: Any) -> None:
        self.tracker = tracker
        tracker.start(initial, total)

    def update(self, n: float | None = 1) -> None:
        self.tracker.add(int(n or 0))

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def close(self) -> None:
        return None


class _Tracker:
    def __init__(self, ctx: JobContext, filename: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx, self.filename, self.clock = ctx, filename, clock
        self.done, self.session, self.t0, self.last = 0, 0, clock(), 0.0
        self.total: int | None = None

    def start(self, initial: int, total: int | None) -> None:
        self.done, self.total = initial, total or self.total
        self._emit(force=True)

    def add(self, n: int) -> None:
        if self.ctx.cancelled:
            raise _Stop()
        if n < 0:  # http_get rolls back when a server ignored the Range header
            self.done += n
            return
        self.done += n
        self.session += n
        self._emit()

    def _emit(self, *, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.last < PROGRESS_INTERVAL:
            return
        self.last = now
        speed = self.session / max(now - self.t0, 1e-6)
        eta = (self.total - self.done) / speed if self.total and speed > 0 else None
        self.ctx.progress(
            "download", done=self.done, total=self.total, unit="bytes", eta_s=eta,
            message=f"{fmt_bytes(self.done)} of {fmt_bytes(self.total)}" if self.total else fmt_bytes(self.done),
            filename=self.filename, speed=speed,
        )


def _transfer(location: str, part: Path, have: int, size: int | None, headers: dict[str, str], filename: str, ctx: JobContext) -> None:
    part.parent.mkdir(parents=True, exist_ok=True)
    tracker = _Tracker(ctx, filename)
    hook = functools.partial(_Progress, tracker=tracker)
    try:
        with part.open("ab") as f:
            http_get(location, cast(BinaryIO, f), resume_size=have, headers=headers, expected_size=size,
                     displayed_filename=filename, tqdm_class=cast(Any, hook))
    except _Stop:
        raise stopped(ctx, filename, dest_dir=part.parent.parent, total=size) from None
    tracker.start(part.stat().st_size, size)  # the last figures, whatever the throttle skipped


def _expected_hash(
    repo_id: str, filename: str, commit: str | None, etag: str, *, endpoint: str | None, token: str | bool | None
) -> tuple[str, str]:
    """("sha256", hex) for an LFS file, ("git-sha1", hex) for a small one, from the Hub's listing."""
    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors(f"reading the checksum of {filename}", repo_id):
        infos = api.get_paths_info(repo_id, [filename], revision=commit)
    for info in infos:
        if getattr(info, "path", None) == filename:
            lfs = getattr(info, "lfs", None)
            if lfs is not None:
                return "sha256", lfs.sha256
            return "git-sha1", info.blob_id  # type: ignore[union-attr]
    if len(etag) == 64:
        return "sha256", etag  # an LFS ETag is the file's sha256
    raise RuntimeFailure(ErrorKind.MODEL_INVALID, f"The Hub gave no checksum for {filename}; Hearth will not add an unverified file.")


def _verify(part: Path, expected: tuple[str, str], filename: str) -> None:
    kind, want = expected
    size = part.stat().st_size
    digest = hashlib.sha256() if kind == "sha256" else hashlib.sha1(f"blob {size}\0".encode())
    with part.open("rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            digest.update(chunk)
    got = digest.hexdigest()
    if got != want.lower():
        part.unlink(missing_ok=True)
        raise RuntimeFailure(
            ErrorKind.MODEL_INVALID,
            f"{filename} arrived corrupted (its {kind} is {got[:12]}…, the Hub says {want[:12]}…). "
            "It was deleted and not added to the library; download it again.",
            detail=f"{kind} got {got} expected {want}",
        )


def _forget_stale_partials(part: Path, filename: str, dest_dir: Path) -> None:
    """A partial for another ETag belongs to an older version of the file: it cannot be resumed."""
    for p in part.parent.glob(f"{glob_escape(filename.replace('/', '--'))}.*.incomplete") if part.parent.is_dir() else ():
        if p != part:
            log.info("removing stale partial %s", p)
            p.unlink(missing_ok=True)


def _size(dest_dir: Path, filename: str) -> int:
    folder = Path(dest_dir) / PARTIAL_DIR
    return sum(p.stat().st_size for p in folder.glob(f"{glob_escape(filename.replace('/', '--'))}.*.incomplete")) if folder.is_dir() else 0
