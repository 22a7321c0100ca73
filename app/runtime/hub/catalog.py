"""Search the Hub and list a repository's files, GGUF quantizations grouped into variants.

The quantization of a file that is not downloaded yet can only come from its name (the Hub's
listing has no per-file GGUF header); the name is used for grouping and display only. Once a file
is downloaded, ``library.read_gguf`` reads the real file type from its metadata.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from huggingface_hub import HfApi

from app.runtime.hardware import Hardware
from app.runtime.hub.errors import hub_errors
from app.runtime.library import ModelInfo
from app.runtime.planner import quant
from app.runtime.planner.shape import ModelShape
from app.runtime.planner.variants import Variant, choose_variant
from app.runtime.protocol import ErrorKind, RuntimeFailure

SortKey = Literal["downloads", "likes", "updated"]
_SORTS: dict[str, str] = {"downloads": "downloads", "likes": "likes", "updated": "last_modified"}
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
# Longest names first, so that Q4_K_M wins over Q4_K and IQ4_XS over Q4; bounded by separators.
_QUANT_NAMES = sorted([*quant.FILE_TYPES, "Q4_K", "Q5_K", "Q3_K"], key=len, reverse=True)
_QUANT = re.compile(r"(?<![A-Za-z0-9])(" + "|".join(map(re.escape, _QUANT_NAMES)) + r")(?![A-Za-z0-9])", re.IGNORECASE)


def search(
    query: str,
    *,
    gguf_only: bool = True,
    text_generation: bool = True,
    sort: SortKey = "downloads",
    limit: int = 30,
    endpoint: str | None = None,
    token: str | bool | None = None,
    state: Any = None,
) -> list[dict[str, Any]]:
    """Models matching ``query``, most downloaded / liked / recently updated first."""
    if sort not in _SORTS:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"sort must be one of {', '.join(_SORTS)}, not {sort!r}")
    if not 1 <= limit <= 1000:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "limit must be between 1 and 1000")
    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors("searching models"):
        found = api.list_models(
            search=query.strip() or None,
            filter="gguf" if gguf_only else None,
            pipeline_tag="text-generation" if text_generation else None,
            sort=_SORTS[sort],  # type: ignore[arg-type]
            limit=limit,
        )
        results = [
            {
                "id": m.id,
                "author": m.author or m.id.partition("/")[0],
                "downloads": m.downloads or 0,
                "likes": m.likes or 0,
                "last_modified": m.last_modified.isoformat() if m.last_modified else None,
                "pipeline_tag": m.pipeline_tag,
                "library_name": m.library_name,
                "tags": list(m.tags or ()),
                "gated": bool(m.gated),
                "gguf": "gguf" in (m.tags or ()) or m.library_name == "gguf",
            }
            for m in found
        ]
    if state is not None:
        state.progress("search", fraction=1.0, message=f"{len(results)} models")
    return results


def list_files(
    repo_id: str,
    revision: str | None = None,
    *,
    model: ModelInfo | ModelShape | None = None,
    hardware: Hardware | None = None,
    context: int | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    state: Any = None,
) -> dict[str, Any]:
    """A repository's files with sizes and LFS sha256, and its GGUF variants grouped.

    With ``model`` (any variant's metadata, e.g. a downloaded one) and ``hardware``, each variant
    gets a fit badge for this machine at ``context``: "gpu", "partial", "cpu" or "none", and the
    planner's pick is marked ``recommended`` with its reason.
    """
    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors(f"listing the files of {repo_id}", repo_id):
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
    files = [
        {
            "path": s.rfilename,
            "size": (s.lfs.size if s.lfs else s.size) or 0,
            "sha256": s.lfs.sha256 if s.lfs else None,
            "lfs": s.lfs is not None,
        }
        for s in info.siblings or ()
    ]
    variants = group_variants(files)
    if model is not None and hardware is not None:
        _add_fit(variants, model, hardware, context)
    if state is not None:
        state.progress("list", fraction=1.0, message=f"{len(files)} files, {len(variants)} variants")
    return {
        "repo_id": info.id,
        "revision": info.sha,
        "gated": bool(info.gated),
        "gguf": info.gguf,
        "files": files,
        "variants": variants,
        "total_size": sum(f["size"] for f in files),
    }


def quant_from_name(filename: str) -> str | None:
    """The llama.cpp file type a GGUF file name announces (``Q4_K_M``), for display only."""
    stem = filename.rsplit("/", 1)[-1]
    matches = _QUANT.findall(stem)
    return matches[-1].upper() if matches else None


def group_variants(files: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """GGUF files grouped into downloadable variants, smallest first.

    Split files (``-00001-of-00003.gguf``) form one variant whose size is the sum of its parts;
    projector files (``mmproj``) are companions, not variants.
    """
    groups: dict[str, dict[str, Any]] = {}
    for f in files:
        path = f["path"]
        if not path.lower().endswith(".gguf") or "mmproj" in path.lower().rsplit("/", 1)[-1]:
            continue
        split = _SPLIT.search(path)
        key = path[: split.start()] if split else path[: -len(".gguf")]
        name = quant_from_name(path) or quant_from_name(key) or key.rsplit("/", 1)[-1]
        g = groups.setdefault(key, {"name": name, "quantization": name if quant.file_type(name) or name.endswith("_K") else None,
                                    "files": [], "size": 0, "parts": int(split.group(2)) if split else 1})
        g["files"].append(path)
        g["size"] += f["size"]
    variants = sorted(groups.values(), key=lambda g: (g["size"], g["name"]))
    for g in variants:
        g["files"].sort()
        g["complete"] = len(g["files"]) == g["parts"]
    return variants


def _add_fit(variants: list[dict[str, Any]], model: ModelInfo | ModelShape, hw: Hardware, context: int | None) -> None:
    candidates = [Variant(v["name"], v["size"], v["files"][0]) for v in variants if v["size"] > 0]
    for v in variants:
        v["fit"], v["recommended"] = "none", False
    if not candidates:
        return
    try:
        choice = choose_variant(candidates, model, hw, context)
    except RuntimeFailure as exc:
        for v in variants:
            v["fit_reason"] = exc.message
        return
    fits = {c["name"]: c["fit"] for c in choice.value["candidates"]}
    for v in variants:
        v["fit"] = fits.get(v["name"], "none")
        if v["name"] == choice.value["name"]:
            v["recommended"], v["fit_reason"] = True, choice.reason
