"""The services the worker exposes, and the table that maps protocol methods to them.

Each handler is ``f(params, state) -> result``, with the `Mode` it runs in: ENGINE handlers touch
the model and run one at a time; BACKGROUND ones wait on the network on threads of their own;
QUICK ones answer at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.runtime import hardware, library
from app.runtime.jobs import JobState, MethodSpec, Mode
from app.runtime.protocol import Method, RuntimeFailure
from app.runtime.services.engine import EngineService
from app.runtime.services.finetune import FinetuneService
from app.runtime.services.hub import HubService
from app.runtime.services.quantize import QuantizeService
from app.runtime.services.server import ServerService

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], JobState], dict[str, Any]]


class Services:
    def __init__(self, *, warm_up: bool = True) -> None:
        self.engine = EngineService(models=self.models, hardware=self.hardware, default_prefs=self.default_prefs)
        self.hub = HubService(models=self.models, hardware=self.hardware, default_prefs=self.default_prefs, release=self._release)
        self.server = ServerService(engine=self.engine, models=self.models)
        self.quantize = QuantizeService(models=self.models, hardware=self.hardware, default_prefs=self.default_prefs)
        self.finetune = FinetuneService(models=self.models, hardware=self.hardware)
        self._hardware: hardware.Hardware | None = None
        self._hardware_lock = threading.Lock()
        if warm_up:
            threading.Thread(target=self._warm_up, name="hearth-warm-up", daemon=True).start()

    def _warm_up(self) -> None:
        """Probe the hardware and parse the default model's header (seconds for a big vocabulary)
        while the person is still typing, so the first message does not wait for them."""
        try:
            self.engine.plan({}, JobState("warm-up", lambda event: None))
        except RuntimeFailure as exc:
            log.info("warm-up skipped: %s", exc.message)

    def default_prefs(self) -> dict[str, Any]:
        """Planner preferences from the person's saved settings (None = Hearth chooses)."""
        from app import settings as settings_module

        saved = settings_module.load()
        return {"context_length": saved.context_length, "threads": saved.n_threads,
                "model_backends": dict(saved.model_backends), "default_backend": saved.default_backend}

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

    def list_models(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        """The library, each model with the planner's verdict for this machine (its fit badge)."""
        from app.runtime import planner

        hw, prefs = self.hardware(), self.engine.prefs({})
        rows = []
        for model in self.models():
            row = model.to_dict()
            try:
                made = self.engine.make_plan(model, prefs, hw, exact=False)
                row["fit"] = {"fits": True, "summary": planner.summary(made), "placement": made.gpu_layers.reason}
            except RuntimeFailure as exc:
                row["fit"] = {"fits": False, "summary": exc.message, "placement": ""}
            rows.append(row)
        if params.get("remote", True):  # the API server lists local models only: two Hearths pointed at each other must not loop
            from app.runtime.backends import remote

            rows.extend(remote.library_rows())  # format "remote": models of the endpoints in the settings
        return {"models": rows}

    def methods(self) -> list[MethodSpec[Any, Any]]:
        legacy = {
            Method.HARDWARE.value: (lambda params, state: self.hardware().to_dict(), Mode.QUICK),
            Method.MODELS_LIST.value: (self.list_models, Mode.QUICK),
            Method.ENGINE_STATUS.value: (self.engine.status, Mode.QUICK),
            Method.ENGINE_PLAN.value: (self.engine.plan, Mode.ENGINE),
            Method.ENGINE_LOAD.value: (self.engine.load, Mode.ENGINE),
            Method.ENGINE_UNLOAD.value: (self.engine.unload, Mode.ENGINE),
            Method.CHAT.value: (self.engine.chat, Mode.ENGINE),
            # Listings answer at once (also while a download runs); a download is a cancellable job;
            # a delete is a job so that it never races a load or a chat of the same file.
            Method.HUB_SEARCH.value: (self.hub.search, Mode.BACKGROUND),
            Method.HUB_FILES.value: (self.hub.files, Mode.BACKGROUND),
            Method.HUB_DOWNLOAD.value: (self.hub.download, Mode.BACKGROUND),
            Method.HUB_DISCARD.value: (self.hub.discard, Mode.QUICK),
            Method.MODELS_DELETE.value: (self.hub.delete, Mode.ENGINE),
            Method.MODELS_ADD_FOLDER.value: (self.hub.add_folder, Mode.QUICK),
            Method.MODELS_DETAILS.value: (self.hub.details, Mode.BACKGROUND),
            Method.MODELS_IMPORT.value: (self.hub.import_file, Mode.BACKGROUND),
            # The API server: binding and stopping wait on sockets; its generations queue with the chats.
            Method.SERVER_START.value: (self.server.start, Mode.BACKGROUND),
            Method.SERVER_STOP.value: (self.server.stop, Mode.BACKGROUND),
            Method.SERVER_STATUS.value: (self.server.status, Mode.QUICK),
            Method.SERVER_LOG.value: (self.server.requests, Mode.QUICK),
            Method.SERVER_GENERATE.value: (self.server.generate, Mode.ENGINE),
            # Quantizing runs child processes for minutes: a job of its own, cancelled by killing them.
            Method.QUANTIZE_TARGETS.value: (self.quantize.targets, Mode.BACKGROUND),
            Method.QUANTIZE_RUN.value: (self.quantize.run, Mode.BACKGROUND),
            # Fine-tuning trains in a child process (cancel = kill); prepare reads data and a tokenizer.
            Method.FINETUNE_PREPARE.value: (self.finetune.prepare, Mode.BACKGROUND),
            Method.FINETUNE_TRAIN.value: (self.finetune.train, Mode.BACKGROUND),
            Method.FINETUNE_EXPORT.value: (self.finetune.export, Mode.BACKGROUND),
        }
        # Transitional: raw-dict methods not yet declared with their own params and result classes.
        return [MethodSpec(name, dict, dict, mode, handler) for name, (handler, mode) in legacy.items()]

    def _release(self, path: str) -> None:
        """Unload the engine's model when it is the file about to be deleted."""
        status = self.engine.status({}, JobState("release", lambda event: None))
        if status.get("loaded") and status["model"]["path"] == path:
            self.engine.unload({}, JobState("release", lambda event: None))

    def attach(self, submit: Any) -> None:
        """Called by the dispatcher with its submit, for the API server's jobs."""
        self.server.attach(submit)

    def close(self) -> None:
        self.server.close()
        self.engine.close()
