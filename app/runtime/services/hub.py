"""The model manager the worker exposes: Hub search, variants with fit badges, downloads, deletes.

Downloads land in ``paths().models/<owner>--<repo>/`` so that the library scan finds them and a
later ``hub.files`` knows which repository a local file came from (its shape then gives exact fit
badges for every other variant). A cancelled download is a pause: the partial file stays under
``.partial`` and the next ``hub.download`` of the same file resumes it; ``hub.discard`` drops it.

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
from app.runtime.jobs import JobState
from app.runtime.library import ModelInfo
from app.runtime.planner import quant
from app.runtime.planner.layout import Budgets
from app.runtime.planner.memory import fmt_bytes
from app.runtime.planner.schema import UserPrefs
from app.runtime.protocol import ErrorKind, RuntimeFailure

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


def _text(params: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = params.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
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

    # ---- the Hub ------------------------------------------------------------------------------

    def search(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        limit = params.get("limit", 30)
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "'limit' must be a number")
        found = hub.search(
            str(params.get("query") or ""),
            gguf_only=bool(params.get("gguf_only", True)),
            sort=params.get("sort", "downloads"),
            limit=limit,
            endpoint=endpoint(),
        )
        return {"models": found}

    def files(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        """A repository's variants with a fit badge each, and what of them is already here."""
        repo_id = _text(params, "repo_id")
        assert repo_id is not None
        local = self._local_model(repo_id)
        hw = self._hardware()
        context = self._default_prefs().get("context_length")
        listing = hub.list_files(repo_id, params.get("revision"), model=local, hardware=hw if local else None,
                                 context=context, endpoint=endpoint())
        if local is None:
            _add_size_fit(listing["variants"], hw)
        folder = repo_folder(repo_id)
        for v in listing["variants"]:
            v["downloaded"] = all((folder / f).is_file() for f in v["files"])
            v["partial_bytes"] = sum(_partial_size(folder, f) for f in v["files"])
            v["fit_text"] = fit_text(v)
        listing["fit_source"] = "model" if local else "size"
        listing["folder"] = str(folder)
        return listing

    def download(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        """Download one variant (all its parts) or one named file; without either, the recommended one.

        Cancel pauses: the error says where it stopped, and the same request later resumes.
        """
        repo_id = _text(params, "repo_id")
        assert repo_id is not None
        filename = _text(params, "filename", required=False)
        if filename:
            names = [filename]
        else:
            listing = self.files({"repo_id": repo_id, "revision": params.get("revision")}, state)
            variant = _pick(listing["variants"], params.get("variant"))
            names = list(variant["files"])
            state.progress("chosen", message=f"{variant['name']} ({fmt_bytes(variant['size'])})", variant=variant["name"],
                           files=names, reason=variant.get("fit_reason", ""))
        folder = repo_folder(repo_id)
        paths = []
        for name in names:
            if not filename and (folder / name).is_file():
                paths.append(folder / name)  # a part of this variant finished (and was verified) before a pause
                continue
            paths.append(hub.download(repo_id, name, dest_dir=folder, state=state, revision=params.get("revision"), endpoint=endpoint()))
        return {"repo_id": repo_id, "files": names, "paths": [str(p) for p in paths], "bytes": sum(p.stat().st_size for p in paths)}

    def discard(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        """Cancel for good: drop the partial files of a paused download."""
        repo_id = _text(params, "repo_id")
        assert repo_id is not None
        names = params.get("files") or ([params["filename"]] if params.get("filename") else [])
        if not names or not all(isinstance(n, str) and n for n in names):
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "hub.discard needs 'filename' or 'files'")
        freed = sum(hub.discard_partial(n, dest_dir=repo_folder(repo_id)) for n in names)
        return {"repo_id": repo_id, "files": names, "freed": freed}

    # ---- the local library --------------------------------------------------------------------

    def delete(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        """Delete a model file from Hearth's models folder or a folder the person added.

        The UI asks first; this refuses the embedded model and any file outside those folders.
        """
        ref = _text(params, "model")
        assert ref is not None
        model = library.resolve(ref, self._models())
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
        return {"deleted": str(path), "id": model.id, "freed": size}

    def add_folder(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        from app import settings as settings_module

        raw = _text(params, "path")
        assert raw is not None
        folder = Path(raw).expanduser().resolve()
        if not folder.is_dir():
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{folder} is not a folder.")
        saved = settings_module.load()
        added = str(folder) not in saved.model_dirs
        if added:
            saved.model_dirs.append(str(folder))
            settings_module.save(saved)
        found = len(library.scan([folder])) - len(library.scan([]))
        return {"path": str(folder), "added": added, "model_dirs": list(saved.model_dirs), "found": found}

    def details(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        """Everything a person may want to read about a model: its GGUF metadata and chat template."""
        ref = _text(params, "model")
        assert ref is not None
        model = library.resolve(ref, self._models())
        meta = library.metadata(model.path)
        return {"model": model.to_dict(), "chat_template": meta.pop("tokenizer.chat_template", None), "metadata": meta}

    def import_file(self, params: dict[str, Any], state: JobState) -> dict[str, Any]:
        """Copy a GGUF file into Hearth's models folder, checked first and written atomically, so
        that a bad or half-copied file never appears in the library."""
        from app.paths import paths

        raw = _text(params, "path")
        assert raw is not None
        source = Path(raw).expanduser().resolve()
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
                    if state.cancelled:
                        raise RuntimeFailure(ErrorKind.CANCELLED, f"Import of {source.name} cancelled; nothing was added.")
                    dst.write(chunk)
                    copied += len(chunk)
                    state.progress("import", fraction=copied / max(info.file_size, 1), message=f"Importing {source.name}")
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return {"path": str(target), "id": library.read_gguf(target, source="folder").id}

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
