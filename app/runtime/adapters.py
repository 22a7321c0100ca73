"""A fine-tune's LoRA adapter as a model in the library: the adapter over its base, no copy of either.

A finished run leaves ``RUN/adapter/`` (peft's adapter and the tokenizer). Registering it writes one
small manifest into the library's models folder, ``<id>.hearth-adapter.json``: which adapter (its
folder, the run, which checkpoint) over which base (the base's library id, and the path it had when
the run started). The library's scan reads each manifest into a `ModelInfo` of format ``adapter``:
the base's shape (the planner sizes the base, the adapter adds a few MB), the adapter's folder as
its path, ``base`` and ``checkpoint`` filled in. The torch backend loads the base and applies the
adapter (`app.runtime.backends.torch_load`); llama.cpp needs the GGUF export (`hearth finetune
--export gguf`), which stays one flag.

A run folder or an adapter folder given by path (``hearth chat --model RUN``) is read the same way
without a manifest: the run's ``run.json`` names the base.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.runtime.protocol import ErrorKind, RuntimeFailure

if TYPE_CHECKING:  # the library calls into this module: it hands over its own `resolve` rather than be imported
    from app.runtime.library import ModelInfo

    Resolve = Callable[[str, list[ModelInfo]], ModelInfo]

log = logging.getLogger(__name__)

FORMAT = "adapter"
MANIFEST_SUFFIX = ".hearth-adapter.json"
ADAPTER_CONFIG = "adapter_config.json"
RUN_FILE = "run.json"  # app.runtime.finetune.config.RUN_FILE (not imported: that module is the trainer's)


def adapter_dir(folder: str | Path) -> Path | None:
    """The adapter folder in ``folder``: itself (an adapter or a trainer checkpoint) or its
    ``adapter/`` (a run folder); None when there is none."""
    folder = Path(folder).expanduser()
    for candidate in (folder, folder / "adapter"):
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate.resolve()
    return None


def _run_dir(adapter: Path) -> Path | None:
    """The run folder an adapter belongs to: RUN/adapter or RUN/checkpoints/checkpoint-N."""
    for run in (adapter.parent, adapter.parent.parent):
        if (run / RUN_FILE).is_file():
            return run
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "fine-tune"


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def _checkpoint(adapter: Path, steps: int | None = None) -> str:
    if adapter.name.startswith("checkpoint-"):
        return adapter.name
    return f"final (step {steps})" if steps else "final"


def _base_from_run(adapter: Path) -> dict[str, Any]:
    """What the run recorded of its base: ``base_id`` and ``base_path`` (set by the fine-tune
    service), else the HF folder it trained on; else peft's own ``base_model_name_or_path``."""
    run = _run_dir(adapter)
    found: dict[str, Any] = {}
    if run is not None:
        try:
            cfg = json.loads((run / RUN_FILE).read_text(encoding="utf-8"))
            extra = cfg.get("extra") or {}
            found = {"base_id": extra.get("base_id"), "base_path": extra.get("base_path") or cfg.get("base"), "run_dir": str(run)}
        except (OSError, ValueError):
            log.warning("cannot read %s", run / RUN_FILE, exc_info=True)
    if not found.get("base_path"):
        try:
            found["base_path"] = json.loads((adapter / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (OSError, ValueError):
            pass
    return found


def base_model(base_id: str | None, base_path: str | None, models: list[ModelInfo], resolve: Resolve) -> ModelInfo:
    """The base as the library knows it: by library id, else by the path it had (``resolve`` is
    `app.runtime.library.resolve`)."""
    for model in models:
        if base_id and model.id == base_id and model.format != FORMAT:
            return model
    if base_path and Path(base_path).exists():
        return resolve(str(base_path), [m for m in models if m.format != FORMAT])
    raise RuntimeFailure(ErrorKind.MODEL_NOT_FOUND,
                         f"The base model of this fine-tune ({base_id or base_path or 'unknown'}) is no longer in the library; add it back to chat with the adapter.")


def describe(folder: str | Path, models: list[ModelInfo], resolve: Resolve, *, manifest: dict[str, Any] | None = None) -> ModelInfo:
    """The library entry of an adapter (a manifest's, or one found by path)."""
    adapter = Path(manifest["adapter"]) if manifest else adapter_dir(folder)
    if adapter is None or not (adapter / ADAPTER_CONFIG).is_file():
        raise RuntimeFailure(ErrorKind.MODEL_NOT_FOUND, f"There is no LoRA adapter in {folder} (no {ADAPTER_CONFIG}).")
    info = manifest or {**_base_from_run(adapter), "checkpoint": _checkpoint(adapter)}
    base = base_model(info.get("base_id"), info.get("base_path"), models, resolve)
    run = Path(info["run_dir"]) if info.get("run_dir") else _run_dir(adapter)
    name = info.get("name") or f"{(run or adapter).name} (fine-tune of {base.name})"
    in_library = any(m.id == base.id and m.path == base.path for m in models)
    return replace(base, id=info.get("id") or _slug((run or adapter).name), name=name, path=str(adapter), format=FORMAT,
                   source="folder", file_size=_size(adapter), base=base.id if in_library else base.path,  # a base outside the library: by path
                   checkpoint=info.get("checkpoint") or _checkpoint(adapter))


def register(adapter: str | Path, models: list[ModelInfo], resolve: Resolve, *, models_dir: Path, base_id: str | None = None,
             base_path: str | None = None, steps: int | None = None, name: str | None = None) -> ModelInfo:
    """Add a finished run's adapter to the library (a manifest in ``models_dir``); its entry.

    The id is the run folder's name; registering the same adapter again replaces its manifest.
    """
    adapter = Path(adapter).resolve()
    found = _base_from_run(adapter)
    run = _run_dir(adapter)
    manifest = {
        "format": "hearth-adapter", "version": 1,
        "id": _slug((run or adapter).name), "adapter": str(adapter), "run_dir": str(run) if run else None,
        "checkpoint": _checkpoint(adapter, steps),
        "base_id": base_id or found.get("base_id"), "base_path": base_path or found.get("base_path"),
    }
    if name:
        manifest["name"] = name
    info = describe(adapter, models, resolve, manifest=manifest)  # refuses a base the library cannot find, before writing
    manifest["base_id"] = info.base
    models_dir.mkdir(parents=True, exist_ok=True)
    path = models_dir / f"{manifest['id']}{MANIFEST_SUFFIX}"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    os.replace(tmp, path)
    log.info("registered the adapter %s over %s as %s", adapter, info.base, info.id)
    return info


def scan(model_dirs: Iterable[Path], models: list[ModelInfo], resolve: Resolve) -> list[ModelInfo]:
    """The registered adapters in the model folders whose adapter and base are still there."""
    found: list[ModelInfo] = []
    for folder in model_dirs:
        for path in sorted(Path(folder).glob(f"*{MANIFEST_SUFFIX}")) if Path(folder).is_dir() else ():
            try:
                manifest = json.loads(path.read_text(encoding="utf-8"))
                found.append(describe(path, models, resolve, manifest=manifest))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("skipping the adapter manifest %s: %s", path, exc)
            except RuntimeFailure as exc:
                log.warning("skipping the adapter manifest %s: %s", path, exc.message)
    return found


def base_folder(model: ModelInfo, models: list[ModelInfo], resolve: Resolve) -> Path:
    """The HF folder of an adapter's base, for the torch backend (a GGUF base converted once)."""
    base = base_model(model.base, model.base, models, resolve)
    if base.format == "gguf":
        from app.runtime.hf_folder import hf_folder_for_gguf

        return hf_folder_for_gguf(base.path)
    return Path(base.path)
