"""The model manager the worker exposes: Hub search, variants with fit badges, downloads, deletes.

Downloads land in ``paths().models/<owner>--<repo>/`` so that the library scan finds them and a
later ``hub.files`` knows which repository a local file came from (its shape then gives exact fit
badges for every other variant). A paused download keeps its partial file under
``.partial`` and the next ``hub.download`` of the same file resumes it; ``hub.discard`` drops it.
A paused download ends as a result with ``status: "paused"`` and how far it got; a cancelled one
removes its partial files (and the parts it finished itself) and ends ``status: "cancelled"``.

The Hub endpoint is ``HF_ENDPOINT`` when set (mirrors, tests), read at each call and passed to
huggingface_hub explicitly, because huggingface_hub reads the variable once at import.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.runtime import hub, library
from app.runtime.hardware import Hardware
from app.runtime.hub.transfer import PARTIAL_DIR, glob_escape
from app.runtime.jobs import JobContext, JobStopped, MethodSpec, Mode
from app.runtime.library import ModelInfo
from app.runtime.planner import quant
from app.runtime.planner.layout import Budgets
from app.runtime.planner.memory import fmt_bytes
from app.runtime.planner.schema import UserPrefs
from app.runtime.protocol import ErrorKind, JobStatus, Method, NoParams, RuntimeFailure
from app.runtime.services.hub_types import (
    AddFolderResult,
    HubDiscardParams,
    HubDiscardResult,
    HubPartialsResult,
    HubDownloadParams,
    HubDownloadResult,
    HubFilesParams,
    HubFilesResult,
    HubSearchParams,
    HubSearchResult,
    ImportResult,
    ModelDeleteResult,
    ModelDetailsResult,
    ModelRefParams,
    PathParams,
)

log = logging.getLogger(__name__)

# Without the model's shape, a badge from the file size alone: the weights plus this share for
# the KV cache and compute buffers at a modest context (a rough rule, said so in the reason).
SIZE_ONLY_OVERHEAD = 0.2
IMPORT_CHUNK = 8 * 2**20


def endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def repo_folder(repo_id: str) -> Path:
    """Where a repository's files are downloaded: ``<models>/<owner>--<name>``."""
    from app.paths import paths

    return paths().models / repo_id.replace("/", "--")


def _text(value: str, name: str) -> str:
    """A declared string field that must say something."""
    if not value.strip():
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"'{name}' must be a non-empty string")
    return value.strip()


class HubService:
    def __init__(
        self,
        *,
        models: Callable[[], list[ModelInfo]],
        hardware: Callable[[], Hardware],
        default_prefs: Callable[[], dict[str, Any]],
        release: Callable[[str], None],
    ) -> None:
        self._models = models
        self._hardware = hardware
        self._default_prefs = default_prefs
        self._release = release  # unloads the engine's model when it is this file

    def methods(self) -> list[MethodSpec[Any, Any]]:
        """Listings answer on threads of their own (also while a download runs); a download is a
        pausable job; a delete is an engine job so that it never races a load or a chat of the file."""
        return [
            MethodSpec(Method.HUB_SEARCH.value, HubSearchParams, HubSearchResult, Mode.BACKGROUND, self.search),
            MethodSpec(Method.HUB_FILES.value, HubFilesParams, HubFilesResult, Mode.BACKGROUND, self.files),
            MethodSpec(Method.HUB_DOWNLOAD.value, HubDownloadParams, HubDownloadResult, Mode.BACKGROUND, self.download, pausable=True,
                       doc="pause keeps the partial file (the same request resumes it); cancel removes it"),
            MethodSpec(Method.HUB_DISCARD.value, HubDiscardParams, HubDiscardResult, Mode.QUICK, self.discard),
            MethodSpec(Method.HUB_PARTIALS.value, NoParams, HubPartialsResult, Mode.QUICK, self.partials,
                       doc="paused downloads on disk, so that a restarted studio lists them, resumable"),
            MethodSpec(Method.MODELS_DELETE.value, ModelRefParams, ModelDeleteResult, Mode.ENGINE, self.delete),
            MethodSpec(Method.MODELS_ADD_FOLDER.value, PathParams, AddFolderResult, Mode.QUICK, self.add_folder),
            MethodSpec(Method.MODELS_DETAILS.value, ModelRefParams, ModelDetailsResult, Mode.BACKGROUND, self.details),
            MethodSpec(Method.MODELS_IMPORT.value, PathParams, ImportResult, Mode.BACKGROUND, self.import_file,
                       doc="cancel removes the half-copied file; nothing is added"),
        ]

    # ---- the Hub ------------------------------------------------------------------------------

    def search(self, params: HubSearchParams, ctx: JobContext) -> HubSearchResult:
        found = hub.search(params.query, gguf_only=params.gguf_only, sort=params.sort, limit=params.limit, endpoint=endpoint())
        return HubSearchResult(found)

    def files(self, params: HubFilesParams, ctx: JobContext) -> HubFilesResult:
        """A repository's variants with a fit badge each, and what of them is already here."""
        repo_id = _text(params.repo_id, "repo_id")
        local = self._local_model(repo_id)
        hw = self._hardware()
        context = self._default_prefs().get("context_length")
        listing = hub.list_files(repo_id, params.revision, model=local, hardware=hw if local else None,
                                 context=context, endpoint=endpoint())
        if local is None:
            _add_size_fit(listing["variants"], hw)
        folder = repo_folder(repo_id)
        for v in listing["variants"]:
            v["downloaded"] = all((folder / f).is_file() for f in v["files"])
            v["partial_bytes"] = sum(_partial_size(folder, f) for f in v["files"])
            v["fit_text"] = fit_text(v)
        return HubFilesResult(**listing, fit_source="model" if local else "size", folder=str(folder))

    def download(self, params: HubDownloadParams, ctx: JobContext) -> HubDownloadResult:
        """Download one variant (all its parts) or one named file; without either, the recommended one.

        A pause ends as ``status: "paused"`` with the file it stopped in and how far it got; the
        same request later resumes. A cancel removes the partial files and the parts this request
        finished (half a split model is no model), and ends as ``status: "cancelled"``.
        """
        repo_id = _text(params.repo_id, "repo_id")
        filename = _text(params.filename, "filename") if params.filename is not None else None
        if filename:
            names = [filename]
        else:
            listing = self.files(HubFilesParams(repo_id, params.revision), ctx)
            variant = _pick(listing.variants, params.variant)
            names = list(variant["files"])
            ctx.progress("chosen", message=f"{variant['name']} ({fmt_bytes(variant['size'])})", variant=variant["name"],
                         files=names, reason=variant.get("fit_reason", ""))
        folder = repo_folder(repo_id)
        paths: list[Path] = []
        fetched: list[Path] = []
        try:
            for name in names:
                if not filename and (folder / name).is_file():
                    paths.append(folder / name)  # a part of this variant finished (and was verified) before a pause
                    continue
                fetched.append(hub.download(repo_id, name, dest_dir=folder, ctx=ctx, revision=params.revision, endpoint=endpoint()))
                paths.append(fetched[-1])
        except JobStopped as stopped:
            if stopped.status is JobStatus.CANCELLED:
                for name in names:
                    hub.discard_partial(name, dest_dir=folder)
                for path in fetched:
                    path.unlink(missing_ok=True)
            stopped.kept.update(repo_id=repo_id, files=names)
            raise
        return HubDownloadResult(repo_id, names, [str(p) for p in paths], sum(p.stat().st_size for p in paths))

    def discard(self, params: HubDiscardParams, ctx: JobContext) -> HubDiscardResult:
        """Drop the partial files of a paused download."""
        repo_id = _text(params.repo_id, "repo_id")
        names = list(params.files) or ([params.filename] if params.filename else [])
        if not names or not all(names):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "hub.discard needs 'filename' or 'files'")
        freed = sum(hub.discard_partial(n, dest_dir=repo_folder(repo_id)) for n in names)
        return HubDiscardResult(repo_id, names, freed)

    def partials(self, params: NoParams, ctx: JobContext) -> HubPartialsResult:
        """The paused downloads in Hearth's models folder (``<owner>--<repo>/.partial/``): a download
        list is not kept across restarts, the partial files are, and each resumes by its file name."""
        from app.paths import paths

        found = []
        for part in sorted(paths().models.glob(f"*/{PARTIAL_DIR}/*.incomplete")):
            stem = part.name.removesuffix(".incomplete").rsplit(".", 1)[0]  # <file, '/' as '--'>.<etag>
            repo_id = part.parent.parent.name.replace("--", "/", 1)
            found.append({"repo_id": repo_id, "filename": stem.replace("--", "/"), "partial_bytes": part.stat().st_size})
        return HubPartialsResult(found)

    # ---- the local library --------------------------------------------------------------------

    def delete(self, params: ModelRefParams, ctx: JobContext) -> ModelDeleteResult:
        """Delete a model file from Hearth's models folder or a folder the person added.

        The UI asks first; this refuses the embedded model and any file outside those folders.
        """
        model = library.resolve(_text(params.model, "model"), self._models())
        if model.source == "embedded":
            raise RuntimeFailure(ErrorKind.UNSUPPORTED, f"{model.name} is Hearth's embedded model; it cannot be deleted.")
        path = Path(model.path).resolve()
        roots = [r.resolve() for r in _library_folders()]
        if not any(path.is_relative_to(r) for r in roots):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{path} is not in a library folder; Hearth deletes only files in its own folders.")
        self._release(str(model.path))
        size = path.stat().st_size
        path.unlink()
        parent = path.parent
        if parent not in roots and parent.exists() and not any(parent.iterdir()):
            parent.rmdir()  # an emptied <owner>--<repo> folder
        log.info("deleted %s (%d bytes)", path, size)
        return ModelDeleteResult(str(path), model.id, size)

    def add_folder(self, params: PathParams, ctx: JobContext) -> AddFolderResult:
        from app import settings as settings_module

        folder = Path(_text(params.path, "path")).expanduser().resolve()
        if not folder.is_dir():
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{folder} is not a folder.")
        saved = settings_module.load()
        added = str(folder) not in saved.model_dirs
        if added:
            saved.model_dirs.append(str(folder))
            settings_module.save(saved)
        found = len(library.scan([folder])) - len(library.scan([]))
        return AddFolderResult(str(folder), added, list(saved.model_dirs), found)

    def details(self, params: ModelRefParams, ctx: JobContext) -> ModelDetailsResult:
        """Everything a person may want to read about a model: its GGUF metadata and chat template."""
        model = library.resolve(_text(params.model, "model"), self._models())
        meta = library.metadata(model.path)
        return ModelDetailsResult(model.to_dict(), meta.pop("tokenizer.chat_template", None), meta)

    def import_file(self, params: PathParams, ctx: JobContext) -> ImportResult:
        """Copy a GGUF file into Hearth's models folder, checked first and written atomically, so
        that a bad or half-copied file never appears in the library (a cancel ends ``cancelled``
        with nothing added)."""
        from app.paths import paths

        source = Path(_text(params.path, "path")).expanduser().resolve()
        info = library.read_gguf(source, source="folder")  # refuses a file that is not a whole GGUF model
        target = paths().models / "imported" / source.name
        if target.exists():
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{target.name} is already in the library ({target}).")
        target.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(target.parent).free
        if free < info.file_size:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{source.name} needs {fmt_bytes(info.file_size)}; only {fmt_bytes(free)} is free.")
        partial = target.with_name(target.name + ".importing")
        copied = 0
        try:
            with source.open("rb") as src, partial.open("wb") as dst:
                while chunk := src.read(IMPORT_CHUNK):
                    ctx.check(f"Import of {source.name} cancelled; nothing was added.", path=str(source))
                    dst.write(chunk)
                    copied += len(chunk)
                    ctx.progress("import", done=copied, total=max(info.file_size, 1), unit="bytes", message=f"Importing {source.name}")
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return ImportResult(str(target), library.read_gguf(target, source="folder").id)

    # ---- internals ----------------------------------------------------------------------------

    def _local_model(self, repo_id: str) -> ModelInfo | None:
        """A downloaded file of this repository: its shape gives exact badges for every variant."""
        folder = repo_folder(repo_id).resolve()
        for model in self._models():
            if Path(model.path).resolve().is_relative_to(folder):
                return model
        return None


def _library_folders() -> list[Path]:
    from app import settings as settings_module
    from app.paths import paths

    return [paths().models, *(Path(p) for p in settings_module.load().model_dirs)]


def _partial_size(folder: Path, filename: str) -> int:
    partials = folder / PARTIAL_DIR
    if not partials.is_dir():
        return 0
    return sum(p.stat().st_size for p in partials.glob(f"{glob_escape(filename.replace('/', '--'))}.*.incomplete"))


def _pick(variants: list[dict[str, Any]], name: Any) -> dict[str, Any]:
    if not variants:
        raise RuntimeFailure(ErrorKind.MODEL_NOT_FOUND, "This repository has no GGUF files; name the file to download.")
    if name is not None:
        for v in variants:
            if v["name"] == name:
                return v
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"No variant {name!r}; there are: {', '.join(v['name'] for v in variants)}.")
    chosen = next((v for v in variants if v.get("recommended")), None)
    if chosen is None:
        raise RuntimeFailure(ErrorKind.OUT_OF_MEMORY, variants[0].get("fit_reason") or "None of the variants fits this machine.")
    return chosen


_WORDS = {"gpu": "entirely on the GPU", "partial": "split between GPU and CPU", "cpu": "on the CPU"}
_FIT_TEXT = {"gpu": "Runs on the GPU", "partial": "Split GPU + CPU", "cpu": "Runs on the CPU", "none": "Too big for this machine"}


def fit_text(variant: dict[str, Any]) -> str:
    """The badge in words, for the CLI and the variants table."""
    return _FIT_TEXT.get(str(variant.get("fit")), "Unknown") + (" (recommended)" if variant.get("recommended") else "")


def _add_size_fit(variants: list[dict[str, Any]], hw: Hardware) -> None:
    """Badges from the file size alone (no shape is known before a first download).

    A variant needs its size plus SIZE_ONLY_OVERHEAD; "gpu" when that fits the first GPU's
    budget, "partial" when GPU and RAM together hold it, "cpu" when RAM does. The recommended one
    follows the planner's rule: the best kind of fit, then the best quality up to the sweet spot.
    """
    prefs = UserPrefs()
    budgets = Budgets.of(hw, safety_margin=prefs.safety_margin_bytes, ram_margin=prefs.ram_margin_bytes)
    gpu = max(budgets.gpus, default=0)
    for v in variants:
        need = int(v["size"] * (1 + SIZE_ONLY_OVERHEAD))
        v["fit"] = "gpu" if v["size"] and need <= gpu else "partial" if gpu and need <= gpu + budgets.ram else "cpu" if need <= budgets.ram else "none"
        v["recommended"] = False
        v["fit_reason"] = f"estimated from the file size ({fmt_bytes(v['size'])} + {SIZE_ONLY_OVERHEAD:.0%} for cache and buffers)"
    sweet = quant.FILE_TYPES[quant.SWEET_SPOT].quality
    for kind in ("gpu", "partial", "cpu"):
        group = [v for v in variants if v["fit"] == kind and v["size"] > 0]
        if not group:
            continue
        modest = [v for v in group if quant.quality(v["name"]) <= sweet]
        pick = max(modest, key=lambda v: (quant.quality(v["name"]), -v["size"])) if modest else min(group, key=lambda v: v["size"])
        if kind == "gpu":
            pick = max(group, key=lambda v: (min(quant.quality(v["name"]), quant.FILE_TYPES["Q8_0"].quality), -v["size"]))
        pick["recommended"] = True
        pick["fit_reason"] = f"{pick['name']} ({fmt_bytes(pick['size'])}) should run {_WORDS[kind]}; " + pick["fit_reason"]
        return
    for v in variants:
        v["fit_reason"] = f"Even the smallest variant ({fmt_bytes(variants[0]['size'])}) needs more memory than this machine has free."
