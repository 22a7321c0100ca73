"""The services the worker exposes, and the table that maps protocol methods to them.

Each handler is ``f(params, state) -> result``; ``is_job`` handlers run one at a time on the job
thread (they touch the model), the others answer at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.runtime import hardware, library
from app.runtime.jobs import JobState
from app.runtime.protocol import Method
from app.runtime.services.engine import EngineService

Handler = Callable[[dict[str, Any], JobState], dict[str, Any]]


class Services:
    def __init__(self, *, warm_up: bool = True) -> None:
        self.engine = EngineService(models=self.models, hardware=self.hardware)
        self._hardware: hardware.Hardware | None = None
        self._hardware_lock = threading.Lock()
        if warm_up:
            # The GPU probe imports torch (seconds); do it while the person is still typing.
            threading.Thread(target=self.hardware, name="hearth-hardware-probe", daemon=True).start()

    def hardware(self) -> hardware.Hardware:
        with self._hardware_lock:
            if self._hardware is None:
                self._hardware = hardware.probe()
            return self._hardware

    def models(self) -> list[library.ModelInfo]:
        from app import settings as settings_module
        from app.paths import paths

        folders = [paths().models, *(Path(p) for p in settings_module.load().model_dirs)]
        return library.scan(folders)

    def methods(self) -> dict[str, tuple[Handler, bool]]:
        return {
            Method.HARDWARE.value: (lambda params, state: self.hardware().to_dict(), False),
            Method.MODELS_LIST.value: (lambda params, state: {"models": [m.to_dict() for m in self.models()]}, False),
            Method.ENGINE_STATUS.value: (self.engine.status, False),
            Method.ENGINE_LOAD.value: (self.engine.load, True),
            Method.ENGINE_UNLOAD.value: (self.engine.unload, True),
            Method.CHAT.value: (self.engine.chat, True),
        }

    def close(self) -> None:
        self.engine.close()
