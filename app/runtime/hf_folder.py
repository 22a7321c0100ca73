"""A Hugging Face folder (safetensors + tokenizer) made once from a GGUF file, for torch.

transformers can load a GGUF file directly (``gguf_file=``), but it dequantizes every tensor and
builds the tokenizer from the GGUF vocabulary on each load: about 20 s for SmolLM2, where the saved
folder reloads in a fraction of a second. The torch backend, the quantize pipeline (GGUF -> HF ->
F16 GGUF) and fine-tuning all start from such a folder, so it is made once per file and cached.

The folder is written next to its final place and renamed into it, so an interrupted conversion
never leaves a half-written folder that a later load would trust.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from app.paths import paths
from app.runtime.protocol import ErrorKind, RuntimeFailure

log = logging.getLogger(__name__)

MARKER = "hearth-source.txt"  # names the GGUF file a cached folder was made from


def cached_folder(gguf_path: str | Path) -> Path:
    """Where the HF folder for this exact file (path, size and modification time) lives."""
    path = Path(gguf_path).resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return paths().cache / "hf-from-gguf" / f"{path.stem}-{key}"


def hf_folder_for_gguf(gguf_path: str | Path, *, cache: Path | None = None) -> Path:
    """The HF folder for a GGUF file, converting it (once) when it is not cached yet.

    ``cache`` replaces the cache folder (tests share one conversion across a session).
    """
    source = Path(gguf_path)
    if not source.is_file():
        raise RuntimeFailure(ErrorKind.MODEL_NOT_FOUND, f"No model file at {source}.")
    target = cached_folder(source) if cache is None else cache / cached_folder(source).name
    if (target / MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _convert(source, staging)
        (staging / MARKER).write_text(str(source.resolve()) + "\n", encoding="utf-8")
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / MARKER).is_file():  # not another process finishing first: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert(source: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("converting %s to a Hugging Face folder for torch (once; about 20 s for a small model)", source.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        # dequantize=True makes a plain fp32 model that save_pretrained can write.
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, quantization_config=GgufConfig(dequantize=True))
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        log.exception("transformers could not read %s", source)
        raise RuntimeFailure(ErrorKind.MODEL_INVALID, f"{source.name} could not be read as a model for torch: {exc}") from exc
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
