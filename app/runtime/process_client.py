"""The runtime in a worker process, spoken to over JSON lines on its stdin/stdout.

When the worker dies (a crash, the OOM killer, kill -9), every pending request gets a
``worker_died`` error event, the listener is told why, and the worker is started again, unless it
keeps dying at start, which is reported instead of looping.
"""

from __future__ import annotations

import collections
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from app.runtime.client import RuntimeClient
from app.runtime.launcher import worker_command
from app.runtime.protocol import PROTOCOL_VERSION, ErrorKind, EventKind, ProtocolError, Request, RuntimeFailure, decode_event

log = logging.getLogger(__name__)

DiedCallback = Callable[[str], None]  # a sentence saying why
RestartedCallback = Callable[[], None]


class ProcessClient(RuntimeClient):
    MAX_QUICK_DEATHS = 3  # deaths within QUICK_DEATH_WINDOW seconds of a start before giving up
    QUICK_DEATH_WINDOW = 10.0

    def __init__(
        self,
        *,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        auto_restart: bool = True,
        start_timeout: float = 60.0,
        on_died: DiedCallback | None = None,
        on_restarted: RestartedCallback | None = None,
    ) -> None:
        super().__init__()
        self._command = command or worker_command()
        self._env = env
        self._auto_restart = auto_restart
        self._start_timeout = start_timeout
        self.on_died = on_died
        self.on_restarted = on_restarted
        self._write_lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._closing = False
        self._quick_deaths = 0
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self.worker_info: dict[str, Any] = {}

    # ---- life cycle -----------------------------------------------------------------------------

    def start(self) -> ProcessClient:
        """Start the worker and wait for its hello; raises RuntimeFailure if it cannot start."""
        env = {**os.environ, **(self._env or {})}
        if env.get("HEARTH_MEMORY_LIMIT"):
            # Under an address-space cap, glibc's 64 MiB per-thread malloc arenas would eat it.
            env.setdefault("MALLOC_ARENA_MAX", "1")
        self._stderr_tail.clear()
        proc = subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self._proc = proc
        self._started_at = time.monotonic()
        hello = threading.Event()
        threading.Thread(target=self._drain_stderr, args=(proc.stderr,), name="hearth-worker-stderr", daemon=True).start()
        threading.Thread(target=self._read_events, args=(proc, hello), name="hearth-worker-events", daemon=True).start()
        if not hello.wait(self._start_timeout) or proc.poll() is not None and not self.worker_info:
            self._kill(proc)
            raise RuntimeFailure(ErrorKind.WORKER_DIED, f"The runtime did not start. {self._why()}")
        if self.worker_info.get("protocol") != PROTOCOL_VERSION:
            self._kill(proc)
            raise RuntimeFailure(
                ErrorKind.PROTOCOL_MISMATCH,
                f"The runtime speaks protocol {self.worker_info.get('protocol')}, this window speaks {PROTOCOL_VERSION}. Reinstall Hearth.",
            )
        log.info("worker %s started (protocol %s)", proc.pid, PROTOCOL_VERSION)
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self, timeout: float = 5.0) -> None:
        """Close the worker's stdin (it exits by itself), then make sure it is gone."""
        self._closing = True
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            self._kill(proc)
        self._fail_all_pending(ErrorKind.CANCELLED, "The runtime was closed.")

    # ---- protocol ---------------------------------------------------------------------------------

    def _send(self, request_id: str, method: str, params: dict[str, Any]) -> None:
        line = Request(request_id, method, params).encode().encode("utf-8")
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise RuntimeFailure(ErrorKind.WORKER_DIED, "The runtime is not running.")
        try:
            with self._write_lock:
                proc.stdin.write(line)
                proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            # The reader thread notices the death too and fails this request with the reason.
            log.info("worker pipe closed while sending %s", request_id)

    def _read_events(self, proc: subprocess.Popen[bytes], hello: threading.Event) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                event = decode_event(line)
            except ProtocolError as exc:
                log.warning("bad line from worker (%s): %r", exc, line[:200])
                continue
            if event.event is EventKind.HELLO:
                self.worker_info = dict(event.data, pid=proc.pid)
                hello.set()
                continue
            self._route(event)
        returncode = proc.wait()
        hello.set()
        if self._closing or proc is not self._proc:
            return
        self._on_death(returncode)

    def _on_death(self, returncode: int) -> None:
        why = self._describe_exit(returncode)
        log.warning("worker died: %s", why)
        self._fail_all_pending(ErrorKind.WORKER_DIED, why)
        if self.on_died:
            self.on_died(why)
        quick = time.monotonic() - self._started_at < self.QUICK_DEATH_WINDOW
        self._quick_deaths = self._quick_deaths + 1 if quick else 0
        if not self._auto_restart or self._closing:
            return
        if self._quick_deaths >= self.MAX_QUICK_DEATHS:
            log.error("worker keeps dying at start; not restarting")
            if self.on_died:
                self.on_died("The runtime keeps stopping right after it starts, so Hearth stopped restarting it. See the log for details.")
            return
        try:
            self.start()
        except RuntimeFailure as exc:
            log.error("worker restart failed: %s", exc.message)
            if self.on_died:
                self.on_died(exc.message)
            return
        if self.on_restarted:
            self.on_restarted()

    def _describe_exit(self, returncode: int) -> str:
        if returncode < 0:
            import signal

            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = f"signal {-returncode}"
            cause = " (the system may have run out of memory)" if name == "SIGKILL" else ""
            return f"The runtime stopped unexpectedly: it was killed by {name}{cause}."
        return f"The runtime stopped unexpectedly with exit code {returncode}. {self._why()}"

    def _why(self) -> str:
        tail = [line for line in self._stderr_tail if line.strip()]
        return f"Last output: {tail[-1]}" if tail else "It printed nothing."

    def _drain_stderr(self, stream: IO[bytes] | None) -> None:
        if stream is None:
            return
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            self._stderr_tail.append(line)
            log.debug("worker stderr: %s", line)

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
