"""The engine service: owns the loaded model, plans and loads it on demand, streams chats.

One model is loaded at a time; the old one is closed before the next loads (llama.cpp frees its
memory in close(), and two models at once is how a desktop runs out of RAM). Every load starts
from the planner: the plan is sent to the listener before loading, with its one-line summary.

A cancelled chat ends as a result with ``status: "cancelled"`` and the partial reply
(``finish_reason: "cancelled"``); a chat cannot pause, so a pause is a cancel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil

from app.runtime import library, planner
from app.runtime.backends.base import Backend, Completion
from app.runtime.hardware import Hardware, this_machine
from app.runtime.jobs import JobContext, MethodSpec, Mode
from app.runtime.library import ModelInfo
from app.runtime.planner import Plan, UserPrefs, dryrun, fallback
from app.runtime.planner import torch_plan
from app.runtime.measurements import FileMeasurementStore, MeasurementStore
from app.runtime.planner.measured import calibration as saved_calibration
from app.runtime.planner.torch_plan import TorchPrefs
from app.runtime.chat_params import ChatParams
from app.runtime.protocol import ErrorKind, Method, NoParams, RuntimeFailure, omitted_when_none
from app.runtime.planner import speculation as spec_plan
from app.runtime.spec.setup import DraftPick, Speculators, check_mode

log = logging.getLogger(__name__)

BACKENDS = ("llama.cpp", "torch")
# saved settings that are not planner prefs: which backend runs a model, and the speculation mode (app.runtime.spec)
BACKEND_SETTINGS = ("model_backends", "default_backend", "speculate")
DRY_RUN_ABOVE = 0.5  # confirm a plan with a dry run when it uses more than this share of a budget
# auto's view of the library for draft models is scanned again after this long (a scan reads every
# file's header: not for every reply); a changed list makes Speculators look for candidates again
DRAFT_LIBRARY_TTL_S = 60.0


# ---- declared params and results ----------------------------------------------------------------


@dataclass(frozen=True)
class EnginePlanParams:
    model: str | None = None  # a library id, name or path; None = the default model
    prefs: dict[str, Any] = field(default_factory=dict)  # planner preferences over the saved settings
    hardware: str | None = None  # a profile name or JSON file: plan for another machine


@dataclass(frozen=True)
class EnginePlanResult:
    model: dict[str, Any]
    hardware: str  # "probe" for this machine, else the profile planned for
    plan: dict[str, Any]
    summary: str


@dataclass(frozen=True)
class EngineLoadParams:
    model: str | None = None
    prefs: dict[str, Any] = field(default_factory=dict)
    reload: bool = False  # load again even when the same model with the same settings is loaded


@dataclass(frozen=True)
class EngineStatus:
    """What is loaded; an unloaded engine says only ``{"loaded": false}``."""

    loaded: bool
    model: dict[str, Any] | None = omitted_when_none()
    backend: str | None = omitted_when_none()
    plan: dict[str, Any] | None = omitted_when_none()
    summary: str | None = omitted_when_none()
    settings: dict[str, Any] | None = omitted_when_none()
    chat_template: str | None = omitted_when_none()  # the model's own, for viewing
    template_source: str | None = omitted_when_none()
    measured: dict[str, Any] | None = omitted_when_none()
    idle_s: float | None = omitted_when_none()  # since a chat or an API request last used the model (0 while one does)


@dataclass(frozen=True)
class ChatResult:
    """A finished (or cancelled: ``finish_reason`` says so, ``text`` is the partial reply) answer."""

    text: str
    finish_reason: str
    usage: dict[str, Any]
    timings: dict[str, Any]
    model: str | None
    context: dict[str, Any] | None = omitted_when_none()
    template: str | None = omitted_when_none()
    kept: dict[str, Any] | None = omitted_when_none()  # server.generate: the GUI conversation's KV kept around it (ms)
    speculation: dict[str, Any] | None = omitted_when_none()  # with a drafter: steps, drafted, accepted (backends.hooks)
    docs: dict[str, Any] | None = omitted_when_none()  # with ChatParams.docs: mode, reason, passages (app.runtime.docs.chat)
    # With ChatParams.tools (app.runtime.tools): the calls, OpenAI-shaped [{"id": "call_...", "type": "function",
    # "function": {"name", "arguments": JSON text}}] (finish_reason "tool_calls"), and how they were made:
    # {"format", "choice", "grammar": {compile_ms, first_mask_ms, mask_ms_per_token, constrained_tokens} | None, "error"?}
    tool_calls: list[dict[str, Any]] | None = omitted_when_none()
    tools: dict[str, Any] | None = omitted_when_none()

    @classmethod
    def of(cls, completion: Completion, model: str | None, **extra: Any) -> ChatResult:
        return cls(**completion.to_dict(), model=model, **extra)


class EngineService:
    def __init__(self, *, models: Callable[[], list[ModelInfo]], hardware: Callable[[], Hardware], default_prefs: Callable[[], dict[str, Any]],
                 measurements: MeasurementStore | None = None) -> None:
        self._models = models
        self._hardware = hardware
        # what benches measured on this machine: the one store the planner is handed (tests give a MemoryMeasurementStore)
        self.measurements = measurements if measurements is not None else FileMeasurementStore.default(this_machine)
        self._default_prefs = default_prefs  # the person's saved settings, under each request's own
        # what a chat with documents searches with (Services.docs_embedder; None: keyword search only)
        self.docs_embedder: Callable[[], Any] = lambda: None
        self._lock = threading.Lock()
        self._backend: Backend | None = None
        self._model: ModelInfo | None = None
        self._plan: Plan | None = None
        self._measured: dict[str, Any] = {}
        self._in_use = 0
        self._last_used = time.monotonic()
        self._speculators = Speculators(self.measurements)  # the draft model, when a chat asks for one
        self._draft_library: tuple[float, list[ModelInfo]] | None = None  # (when scanned, models) for auto's draft search
        self._split: spec_plan.DovetailSplit | None = None  # the target's GPU layers given to its draft model, while it drafts
        self._loaded_prefs = UserPrefs()  # what the loaded model was planned with, before any split

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Mark the model as used for the duration (a chat, an API request): the studio's idle
        unload asks `status().idle_s` before it frees a model someone else is using."""
        self._in_use += 1
        try:
            yield
        finally:
            self._in_use -= 1
            self._last_used = time.monotonic()

    # ---- requests ---------------------------------------------------------------------------------

    def methods(self) -> list[MethodSpec[Any, Any]]:
        """The status answers at once; everything that touches the model runs on the engine thread."""
        return [
            MethodSpec(Method.ENGINE_STATUS.value, NoParams, EngineStatus, Mode.QUICK, self.status),
            MethodSpec(Method.ENGINE_PLAN.value, EnginePlanParams, EnginePlanResult, Mode.ENGINE, self.plan),
            MethodSpec(Method.ENGINE_LOAD.value, EngineLoadParams, EngineStatus, Mode.ENGINE, self.load),
            MethodSpec(Method.ENGINE_UNLOAD.value, NoParams, EngineStatus, Mode.ENGINE, self.unload),
            MethodSpec(Method.CHAT.value, ChatParams, ChatResult, Mode.ENGINE, self.chat,
                       doc="cancel ends with status cancelled and the partial reply"),
        ]

    def plan(self, params: EnginePlanParams, ctx: JobContext) -> EnginePlanResult:
        """The plan for a model without loading it (what the person sees before a load);
        ``hardware`` names a profile or JSON file to plan for another machine."""
        model, prefs = self._request_target(params.model, params.prefs)
        hw = planner.load_profile(params.hardware) if params.hardware else self._hardware()
        made = self.make_plan(model, prefs, hw, torch_prefs=self.torch_prefs(params.prefs))
        return EnginePlanResult(model.to_dict(), hw.source, made.to_dict(), planner.summary(made))

    def load(self, params: EngineLoadParams, ctx: JobContext) -> EngineStatus:
        model, prefs = self._request_target(params.model, params.prefs)
        self._ensure_loaded(model, prefs, ctx, force=params.reload, torch_prefs=self.torch_prefs(params.prefs))
        return self.status(NoParams(), ctx)

    def unload(self, params: NoParams, ctx: JobContext) -> EngineStatus:
        with self._lock:
            self._close_current()
        return EngineStatus(loaded=False)

    def status(self, params: NoParams, ctx: JobContext) -> EngineStatus:
        model, made, backend = self._model, self._plan, self._backend
        if model is None or backend is None or made is None:
            return EngineStatus(loaded=False)
        return EngineStatus(
            loaded=True,
            model=model.to_dict(),
            backend=backend.name,
            plan=made.to_dict(),
            summary=planner.summary(made),
            settings=dict(getattr(backend, "settings", {})),
            chat_template=getattr(backend, "chat_template", None),
            template_source=getattr(backend, "template_source", None),
            measured=dict(self._measured),
            idle_s=0.0 if self._in_use else round(time.monotonic() - self._last_used, 1),
        )

    def chat(self, request: ChatParams, ctx: JobContext) -> ChatResult:
        with self.in_use():
            return self._chat(request, ctx)

    def _chat(self, request: ChatParams, ctx: JobContext) -> ChatResult:
        if request.model is not None and request.model.startswith("remote:"):
            from app.runtime.backends import remote  # streams from an endpoint; the local model stays loaded

            if request.tools:
                raise RuntimeFailure(ErrorKind.UNSUPPORTED, "Tools are not forwarded to remote engines by this version; use a local model.")
            messages, docs = self._documents(request, None, ctx)
            sent = remote.resolve(request.model).chat(messages, request.sampling, on_token=ctx.token, is_cancelled=lambda: ctx.cancelled)
            return ChatResult.of(sent, request.model, docs=docs)
        if request.backend not in ("auto", *BACKENDS):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"Unknown backend {request.backend!r}. Available: auto, {', '.join(BACKENDS)}.")
        if request.backend != "auto":
            request = dataclasses.replace(request, prefs={**request.prefs, "backend": request.backend})
        with self._lock:
            loaded, current = self._backend, self._model
        saved_backend = self._with_backend(current, UserPrefs()).backend if current is not None else None
        if loaded is not None and saved_backend is not None and saved_backend != loaded.name:
            request = dataclasses.replace(request, prefs={**request.prefs, "backend": saved_backend})  # chosen in the settings since
        if loaded is None or request.model is not None or request.prefs:
            # A conversation's own settings (say, its context length) may need a different plan;
            # _ensure_loaded keeps the loaded model when the plan comes out the same.
            model = library.resolve(request.model, self._models()) if request.model or current is None else current
            loaded = self._ensure_loaded(model, self.prefs(request.prefs), ctx, torch_prefs=self.torch_prefs(request.prefs))
        speculation = self.drafter(request.speculate, loaded, ctx=ctx)  # a draft model's Dovetail split may reload the target
        loaded = self._backend or loaded
        messages, docs = self._documents(request, loaded, ctx)
        from app.runtime.tools.calls import for_backend  # None without tools: the chat is as before

        tools = for_backend(request, loaded)
        completion = loaded.chat(
            messages,
            request.sampling,
            on_token=tools.stream(ctx.token) if tools else ctx.token,
            is_cancelled=lambda: ctx.cancelled,
            context_policy=request.context_policy,
            chat_template=request.chat_template,
            **(tools.backend_kwargs() if tools else {}),
            **speculation,
            **_live_speculation(loaded, ctx),
        )
        extra: dict[str, Any] = {}
        if tools is not None:
            completion, extra = tools.apply(completion)
        return ChatResult.of(completion, self._model.id if self._model else None, docs=docs, **extra)

    def drafter(self, speculate: str | None, loaded: Backend, *, ctx: JobContext | None = None) -> dict[str, Any]:
        """The backend's speculation argument for a mode (a chat's, else the saved setting, else
        auto): the llama.cpp token loop's ``drafter``, the torch backend's ``speculate``, nothing
        for the rest. Engine thread only (a chat, an API request).

        With ``ctx`` (a chat, which reads `backend` again afterwards) a draft model's Dovetail split
        is applied first: the target reloads with the GPU layers its placement leaves it, once, and
        gets them back when the draft is dropped. Without it (an API request holds its backend) the
        target stays as loaded."""
        model, made = self._model, self._plan
        if model is None:
            return {}
        mode = speculate or self._default_prefs().get("speculate") or "auto"
        if loaded.name == "torch":  # SpecExec trees for offloaded targets (backends.torch_spec) take the mode itself
            return {"speculate": mode}
        if loaded.name != "llama.cpp" or made is None:
            return {}
        kind, _ = check_mode(mode)
        threads = int(made.threads.value["threads"])  # as planner.llama_cpp_kwargs passes them
        # a library scan only to find a draft model: every time for draft:MODEL (a name to resolve), cached for auto
        models = self._models() if kind == "draft" else self._library_for_drafts() if kind == "auto" else ()
        curve = self._speculators.stored_curve(model.path, int(made.gpu_layers.value["n_gpu_layers"]), threads)
        pick = self._speculators.pick(mode, target=model, target_plan=made, models=models, curve=curve, threads=threads)
        if ctx is not None:
            pick = self._apply_split(model, pick, ctx)
            loaded, made = self._backend or loaded, self._plan
        elif pick is not None and pick.placement is not None and pick.placement.target_gpu_layers is not None and self._split is None:
            pick = dataclasses.replace(pick, placement=spec_plan.DraftPlacement(  # an API request cannot reload the model it holds
                "cpu", 0, None, "the model keeps its GPU layers during an API request, so the draft model runs on the CPU"))
        drafter = self._speculators.drafter(mode, backend=loaded.name, target=model, target_plan=made, pick=pick,
                                            n_ctx=int(getattr(loaded, "n_ctx", 2048)), threads=threads)
        return {} if drafter is None else {"drafter": drafter}

    def _library_for_drafts(self) -> list[ModelInfo]:
        """The library as auto's draft search sees it: scanned at most every DRAFT_LIBRARY_TTL_S."""
        held = self._draft_library
        if held is None or time.monotonic() - held[0] > DRAFT_LIBRARY_TTL_S:
            held = self._draft_library = (time.monotonic(), list(self._models()))
        return held[1]

    def _apply_split(self, model: ModelInfo, pick: DraftPick | None, ctx: JobContext) -> DraftPick | None:
        """Reload the target for a draft model's Dovetail split (once, when the draft is taken), or
        without it when the draft is dropped; the pick as it stands after, its note saying so."""
        split, made = self._split, self._plan
        draft = pick.info if pick is not None else None
        if split is not None and (draft is None or draft.path != split.draft_path):
            self._split = None  # the draft is dropped: the target takes its GPU layers back
            log.info("Dovetail split of %s ended: the draft model %s is no longer used", model.name, split.draft_name)
            self._ensure_loaded(model, self._loaded_prefs, ctx)
            if pick is None or draft is None or self._plan is None:
                return pick
            return dataclasses.replace(pick, placement=spec_plan.place_draft(self._plan, draft.file_size))
        if pick is None or draft is None:
            return pick
        if split is None and made is not None and pick.placement is not None and pick.placement.target_gpu_layers is not None:
            prefs = self._dovetail_prefs(pick.placement, self._loaded_prefs)
            if prefs is None or prefs.gpu_layers is None:  # the person pinned the model's GPU layers: it keeps them
                return dataclasses.replace(pick, placement=spec_plan.DraftPlacement(
                    "cpu", 0, None, "the model's GPU layers are pinned by you, so the draft model runs on the CPU"))
            gave = int(made.gpu_layers.value["n_gpu_layers"]) - prefs.gpu_layers
            self._split = split = spec_plan.DovetailSplit(model.path, prefs.gpu_layers, gave, draft.name, draft.path)
            ctx.progress("replanned", message=f"{model.name} gives up {gave} GPU layer(s) to the draft model {draft.name}",
                         model=model.id, split=split.to_dict())
            self._ensure_loaded(model, self._loaded_prefs, ctx)
        if split is None:
            return pick
        note = f"the model gave up {split.gave_up} GPU layer(s) to it (Dovetail split)"
        return dataclasses.replace(pick, note=f"{pick.note}; {note}" if pick.note else note)

    @staticmethod
    def _dovetail_prefs(placement: spec_plan.DraftPlacement | None, prefs: UserPrefs) -> UserPrefs | None:
        """The prefs a target reloads with for its draft's placement (its GPU layers set to what the
        placement leaves it), or None when the target keeps its layers: no split asked, or the person
        pinned the GPU layers (their choice wins)."""
        if placement is None or placement.target_gpu_layers is None or prefs.gpu_layers is not None:
            return None
        return dataclasses.replace(prefs, gpu_layers=placement.target_gpu_layers)

    def _with_split(self, model: ModelInfo, prefs: UserPrefs) -> tuple[UserPrefs, spec_plan.DovetailSplit | None]:
        """The prefs a load of ``model`` uses while a Dovetail split holds for it (none once the model changes)."""
        split = self._split
        if split is not None and (split.model_path != model.path or prefs.gpu_layers is not None):
            self._split = split = None  # another model, or the person pinned the GPU layers: their choice wins
        if split is None:
            return prefs, None
        return dataclasses.replace(prefs, gpu_layers=split.n_gpu_layers), split

    def _documents(self, request: ChatParams, loaded: Backend | None, ctx: JobContext) -> tuple[Any, dict[str, Any] | None]:
        """The request's messages with the documents it asks for placed in them (`docs.chat`), and
        what went in; the reason is reported as progress too, so the studio shows it while the
        reply is written."""
        if request.docs is None:
            return request.messages, None
        from app.runtime.docs import chat as docs_chat  # only a chat with documents pays for the import

        count_chat, count_text = docs_chat.counters(loaded, request.chat_template)
        n_ctx = int(getattr(loaded, "n_ctx", 0) or docs_chat.REMOTE_N_CTX)
        ctx.progress("documents", message=f"Searching the documents of \"{request.docs['collection']}\"")
        messages, docs = docs_chat.with_documents(request.messages, request.docs, n_ctx=n_ctx, max_tokens=request.sampling.max_tokens,
                                                  policy=request.context_policy, count_chat=count_chat, count_text=count_text,
                                                  embedder=self.docs_embedder())
        ctx.progress("documents", message=str(docs["reason"]), mode=docs["mode"], sources=len(docs["passages"]))
        return messages, docs

    @property
    def backend(self) -> Backend | None:
        """The loaded backend (None when nothing is loaded); engine thread only (the API server's jobs)."""
        return self._backend

    def close(self) -> None:
        with self._lock:
            self._close_current()

    # ---- internals --------------------------------------------------------------------------------

    def _request_target(self, model_ref: str | None, raw_prefs: dict[str, Any]) -> tuple[ModelInfo, UserPrefs]:
        return library.resolve(model_ref, self._models()), self.prefs(raw_prefs)

    def _merged(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """The person's saved settings, with this request's own (non-None) values on top."""
        asked = {k: v for k, v in overrides.items() if v is not None}
        return {k: v for k, v in {**self._default_prefs(), **asked}.items() if v is not None and k not in BACKEND_SETTINGS}

    def prefs(self, overrides: dict[str, Any]) -> UserPrefs:
        """The planner preferences (the torch-only keys go to `torch_prefs`)."""
        _, rest = TorchPrefs.split(self._merged(overrides))
        return UserPrefs.from_dict(rest)

    def torch_prefs(self, overrides: dict[str, Any]) -> TorchPrefs:
        return TorchPrefs.split(self._merged(overrides))[0]

    def _with_backend(self, model: ModelInfo, prefs: UserPrefs) -> UserPrefs:
        """The backend the person chose for this model in the settings (per model, else their default),
        when the request itself names none."""
        if prefs.backend is not None:
            return prefs
        saved = self._default_prefs()
        chosen = (saved.get("model_backends") or {}).get(model.id) or saved.get("default_backend")
        return dataclasses.replace(prefs, backend=chosen) if chosen in BACKENDS else prefs

    def make_plan(self, model: ModelInfo, prefs: UserPrefs, hw: Hardware, *, exact: bool = True, torch_prefs: TorchPrefs | None = None) -> Plan:
        """The one way a plan is made: ``exact`` reads the shape from the file's tensor table
        (else it is estimated from the metadata, for quick listings), with this machine's calibration."""
        prefs = self._with_backend(model, prefs)
        if planner.choose_backend(model, prefs).value == "torch":
            torch_prefs = torch_prefs or self.torch_prefs({})
            torch_plan.measure_missing(model, hw, prefs, torch_prefs, self.measurements)
            return planner.plan(model, hw, prefs, torch_prefs=torch_prefs, measurements=self.measurements)
        shape = planner.read_shape(model) if exact else None
        return planner.plan(model, hw, prefs, shape=shape, calibration=saved_calibration(hw, self.measurements))

    def _ensure_loaded(self, model: ModelInfo, prefs: UserPrefs, ctx: JobContext, *, force: bool = False, torch_prefs: TorchPrefs | None = None) -> Backend:
        hw = self._hardware()
        asked = prefs
        prefs, split = self._with_split(model, prefs)  # a draft model's Dovetail split holds until the draft is dropped
        made = spec_plan.split_plan(self.make_plan(model, prefs, hw, torch_prefs=torch_prefs), split)
        with self._lock:
            current = self._backend
            same = self._model is not None and self._model.path == model.path and self._plan is not None
            if current is not None and same and not force and _settings(self._plan) == _settings(made):  # type: ignore[arg-type]
                return current
            self._close_current()
            if made.backend.value == "torch":
                return self._load_torch(model, made, ctx)
            shape, calibration = planner.read_shape(model), saved_calibration(hw, self.measurements)  # the header is parsed once per process
            made, checked = self._confirm(made, model, hw, prefs, shape, calibration, ctx)
            made = spec_plan.split_plan(made, split)
            ctx.progress("planned", message=planner.summary(made), model=model.id, plan=made.to_dict(), checked=checked)
            ctx.progress("loading", message=f"Loading {model.name}", model=model.id)
            from app.runtime.backends.llama_cpp import LlamaCppBackend

            process = psutil.Process()
            before = process.memory_info().rss
            loaded, made, changes = fallback.load_with_fallback(
                lambda p: LlamaCppBackend(model.path, planner.llama_cpp_kwargs(p)), made, model, hw, prefs, shape=shape, calibration=calibration
            )
            if changes:
                ctx.progress("replanned", message=" ".join(changes), model=model.id, plan=made.to_dict())
            self._measured = {
                "rss_increase_bytes": process.memory_info().rss - before,
                "load_seconds": round(loaded.load_seconds, 3),
                "dry_run": checked,
                "fallback": changes,
            }
            self._backend, self._model, self._plan = loaded, model, spec_plan.split_plan(made, split)  # a fallback may have replanned
            self._loaded_prefs = asked
            log.info("loaded %s: %s (measured %s)", model.id, planner.summary(made), self._measured)
            ctx.progress("loaded", fraction=1.0, message=f"Loaded {model.name}", model=model.id)
            return loaded

    def _load_torch(self, model: ModelInfo, made: Plan, ctx: JobContext) -> Backend:
        """Load with the torch plan (no dry run: accelerate's budgets already bound every device)."""
        from app.runtime.backends.torch import TorchBackend

        ctx.progress("planned", message=planner.summary(made), model=model.id, plan=made.to_dict(), checked="no dry run for torch")
        if model.format == "gguf":
            from app.runtime.hf_folder import cached_folder, hf_folder_for_gguf

            if not (cached_folder(model.path) / "hearth-source.txt").is_file():
                ctx.progress("converting", message=f"Converting {model.name} for torch (once)", model=model.id)
            source = hf_folder_for_gguf(model.path)
        else:
            source = model.path
        settings = torch_plan.torch_kwargs(made)
        if model.format == "adapter":  # a fine-tune: its base (by library id), with the LoRA adapter applied
            from app.runtime import adapters

            source, settings = adapters.base_folder(model, self._models(), library.resolve), {**settings, "adapter": model.path}
        ctx.progress("loading", message=f"Loading {model.name} in torch", model=model.id)
        process = psutil.Process()
        before = process.memory_info().rss
        loaded = TorchBackend(source, settings)
        self._measured = {"rss_increase_bytes": process.memory_info().rss - before, "load_seconds": round(loaded.load_seconds, 3),
                          "dry_run": "none", "fallback": []}
        self._backend, self._model, self._plan = loaded, model, made
        log.info("loaded %s in torch: %s (measured %s)", model.id, planner.summary(made), self._measured)
        ctx.progress("loaded", fraction=1.0, message=f"Loaded {model.name}", model=model.id)
        return loaded

    @staticmethod
    def _confirm(made: Plan, model: ModelInfo, hw: Hardware, prefs: UserPrefs, shape: Any, calibration: Any, ctx: JobContext) -> tuple[Plan, str]:
        """Confirm a tight plan with a dry run (a child process that simulates the allocations).

        A plan that uses little of every budget skips it: the dry run costs about a second of
        process start-up, more than loading a small model, and cannot change such a plan.
        """
        devices = made.memory.value["devices"]
        tightest = max((d["total"] / d["budget"] for d in devices if d.get("budget")), default=1.0)
        if tightest < DRY_RUN_ABOVE:
            return made, f"no dry run: the plan uses {tightest:.0%} of the tightest memory budget"
        ctx.progress("checking", message="Checking the plan with a dry run", model=model.id)
        measured = dryrun.dry_run(model.path, planner.llama_cpp_kwargs(made))
        return dryrun.confirm(made, model, hw, prefs, measured, shape=shape, calibration=calibration)

    def _close_current(self) -> None:
        self._speculators.close()  # a draft model belongs to the model it drafts for
        backend, self._backend, self._model, self._plan = self._backend, None, None, None
        if backend is not None:
            backend.close()


def _settings(made: Plan) -> dict[str, Any]:
    """What a backend is loaded with: equal settings mean the loaded model can be kept."""
    if made.backend.value == "torch":
        return {"backend": "torch", **torch_plan.torch_kwargs(made)}
    return {"backend": made.backend.value, **planner.llama_cpp_kwargs(made)}


def _live_speculation(loaded: Backend, ctx: JobContext) -> dict[str, Any]:
    """The chat's ``on_speculation`` when the backend's chat takes one (llama.cpp, torch): each report
    of what speculation has done so far becomes a "speculation" progress event, which the studio's
    status bar shows while the reply streams. A backend without the parameter is called as before."""
    if "on_speculation" not in inspect.signature(loaded.chat).parameters:
        return {}

    def report(stats: dict[str, Any]) -> None:
        words = f"{stats.get('accepted', 0)} of {stats.get('drafted', 0)} guessed tokens accepted in {stats.get('steps', 0)} steps"
        ctx.progress("speculation", message=words, speculation=stats)

    return {"on_speculation": report}
