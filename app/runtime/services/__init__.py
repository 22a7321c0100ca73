"""The services the worker exposes, and the table that maps protocol methods to them.

Each service declares its methods (`MethodSpec`: params dataclass, result dataclass, `Mode`,
handler ``(params, JobContext) -> result``) in its own ``methods()``; `Services.methods` is their
union plus the two it answers itself (hardware, models.list). ENGINE handlers touch the model and
run one at a time; BACKGROUND ones wait on the network or a child process on threads of their own;
QUICK ones answer at once.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.runtime import hardware, library
from app.runtime.jobs import JobContext, MethodSpec, Mode
from app.runtime.protocol import Method, NoParams, RuntimeFailure
from app.runtime.services.embed import EmbedService, LibraryEmbedder
from app.runtime.services.engine import EnginePlanParams, EngineService
from app.runtime.services.finetune import FinetuneService
from app.runtime.services.hub import HubService
from app.runtime.services.mcp import McpService
from app.runtime.services.quantize import QuantizeService
from app.runtime.services.server import ServerService

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelsListParams:
    # False for the API server: two Hearths pointed at each other must not list each other in a loop.
    remote: bool = True


@dataclass(frozen=True)
class ModelsListResult:
    models: list[dict[str, Any]]  # `ModelInfo.to_dict` rows plus ``fit`` (fits, summary, placement)


class Services:
    def __init__(self, *, warm_up: bool = True) -> None:
        self.engine = EngineService(models=self.models, hardware=self.hardware, default_prefs=self.default_prefs)
        self.hub = HubService(models=self.models, hardware=self.hardware, default_prefs=self.default_prefs, release=self._release)
        self.server = ServerService(engine=self.engine, models=self.models)
        self.quantize = QuantizeService(models=self.models, hardware=self.hardware, default_prefs=self.default_prefs)
        self.finetune = FinetuneService(models=self.models, hardware=self.hardware)
        self.mcp = McpService()  # MCP servers start when a chat first needs their tools
        self.embed = EmbedService(models=self.models, threads=lambda: self.default_prefs().get("threads"))
        self.engine.docs_embedder = self.docs_embedder  # a chat with documents searches with it too
        self._hardware: hardware.Hardware | None = None
        self._hardware_lock = threading.Lock()
        if warm_up:
            threading.Thread(target=self._warm_up, name="hearth-warm-up", daemon=True).start()

    def _warm_up(self) -> None:
        """Probe the hardware and parse the default model's header (seconds for a big vocabulary)
        while the person is still typing, so the first message does not wait for them."""
        try:
            self.engine.plan(EnginePlanParams(), JobContext.detached("warm-up"))
        except RuntimeFailure as exc:
            log.info("warm-up skipped: %s", exc.message)

    def default_prefs(self) -> dict[str, Any]:
        """Planner preferences from the person's saved settings (None = Hearth chooses)."""
        from app import settings as settings_module

        saved = settings_module.load()
        return {"context_length": saved.context_length, "threads": saved.n_threads,
                "model_backends": dict(saved.model_backends), "default_backend": saved.default_backend,
                "speculate": getattr(saved, "speculate", "auto")}

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

    def list_models(self, params: ModelsListParams, ctx: JobContext) -> ModelsListResult:
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
        if params.remote:
            from app.runtime.backends import remote

            rows.extend(remote.library_rows())  # format "remote": models of the endpoints in the settings
        return ModelsListResult(rows)

    def _hardware_result(self, params: NoParams, ctx: JobContext) -> hardware.Hardware:
        return self.hardware()

    def methods(self) -> list[MethodSpec[Any, Any]]:
        """Every service method, each declared once by its service."""
        own: list[MethodSpec[Any, Any]] = [
            MethodSpec(Method.HARDWARE.value, NoParams, hardware.Hardware, Mode.QUICK, self._hardware_result),
            MethodSpec(Method.MODELS_LIST.value, ModelsListParams, ModelsListResult, Mode.QUICK, self.list_models),
        ]
        from app.runtime.services.docs import DocsService  # one per dispatcher (it reads methods() once)

        # engine.unload frees the embedding context too: both are "the loaded model" to the person
        engine = [dataclasses.replace(s, handler=self._unload) if s.name == Method.ENGINE_UNLOAD.value else s for s in self.engine.methods()]
        return [*own, *engine, *self.embed.methods(), *self.hub.methods(), *self.server.methods(), *self.quantize.methods(),
                *self.finetune.methods(), *DocsService(embedder=self.docs_embedder).methods(), *self.mcp.methods()]

    def docs_embedder(self) -> LibraryEmbedder | None:
        """The model documents are embedded and searched with (the `docs_embedder` setting, else the
        library's first embedding model); None: keyword search only."""
        from app import settings as settings_module

        return self.embed.for_documents(settings_module.load().docs_embedder)

    def _unload(self, params: NoParams, ctx: JobContext) -> Any:
        self.embed.close()
        return self.engine.unload(params, ctx)

    def _release(self, path: str) -> None:
        """Unload the engine's model (and the embedder) when it is the file about to be deleted."""
        self.embed.close(path)
        ctx = JobContext.detached("release")
        status = self.engine.status(NoParams(), ctx)
        if status.loaded and status.model is not None and status.model["path"] == path:
            self.engine.unload(NoParams(), ctx)

    def attach(self, submit: Any) -> None:
        """Called by the dispatcher with its submit, for the API server's jobs."""
        self.server.attach(submit)

    def close(self) -> None:
        self.server.close()
        self.mcp.close()  # stops every MCP server with the worker
        self.embed.close()
        self.engine.close()
