"""What keeps a quantize run from leaving anything half-made where the library would trust it.

- The source is checked before any work: an HF folder needs its config and every weight file
  whole (a safetensors header says exactly how long the file must be); a GGUF file must start
  with the magic and hold every tensor its header lists. The words say what to do.
- Free space is checked against the estimated output before each step; a disk that fills anyway
  (ENOSPC, or llama.cpp's "iostream error" with the disk found full at that moment) is reported
  as "the disk is full".
- Outputs are written under a hidden temporary name that the library never lists (it scans for
  ``*.gguf``), opened with gguf's reader once complete, and only then renamed into place. A run
  that dies leaves only a hidden ``.part`` file whose owner is gone; the next run sweeps it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from app.runtime.library import ModelInfo, open_gguf, read_gguf
from app.runtime.protocol import ErrorKind, RuntimeFailure
from app.runtime.quantize.targets import TensorInfo

log = logging.getLogger(__name__)

SPACE_MARGIN = 64 * 2**20  # never fill a disk to the last byte
FULL_BELOW = 16 * 2**20  # a write that failed with less than this free failed for want of space
PART_SUFFIX = ".part"
_PART = re.compile(r"^\..+\.(\d+)-[0-9a-f]{8}\.part$")
_QUANT_SUFFIX = re.compile(r"[.\-_](f32|f16|bf16|q\d(_\w+)?|iq\d(_\w+)?|tq\d_\d|mxfp4_moe)$", re.IGNORECASE)
UNQUANTIZED = ("F32", "F16", "BF16")


@dataclass
class Source:
    """A checked source: what it is, what its tensors are, and what a person should know."""

    kind: str  # "hf" | "gguf"
    path: Path
    name: str  # the base name outputs are called after
    file_type: str  # "F16", "Q4_1"... for GGUF; the weights' dtype for an HF folder
    size: int
    tensors: list[TensorInfo]
    info: ModelInfo | None = None  # GGUF metadata, for the planner
    warnings: list[str] = field(default_factory=list)

    @property
    def quantized(self) -> bool:
        return self.kind == "gguf" and self.file_type not in UNQUANTIZED


def base_name(stem: str) -> str:
    """A model's name without its quantization suffix ("SmolLM2-135M-Instruct.Q4_1" -> "SmolLM2-135M-Instruct")."""
    stripped = _QUANT_SUFFIX.sub("", stem)
    return stripped or stem


def inspect_source(path: str | Path) -> Source:
    """Check a source and describe it, or raise MODEL_NOT_FOUND / MODEL_INVALID in words."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _inspect_hf(path)
    if not path.is_file():
        raise RuntimeFailure(ErrorKind.MODEL_NOT_FOUND, f"There is no model at {path}.")
    return _inspect_gguf(path)


def _inspect_gguf(path: Path) -> Source:
    info = read_gguf(path, source="folder")  # magic, header and truncation checks, in words
    reader = open_gguf(path)
    tensors = [
        TensorInfo(t.name, int(t.n_elements), int(t.shape[0]) if len(t.shape) else int(t.n_elements), sum(1 for d in t.shape if int(d) > 1) or 1)
        for t in reader.tensors
    ]
    if not tensors:
        raise RuntimeFailure(ErrorKind.MODEL_INVALID, f"{path.name} holds no tensors: it is not a model (perhaps a vocabulary-only file).")
    source = Source("gguf", path, base_name(path.stem), info.quantization, info.file_size, tensors, info)
    if source.quantized:
        source.warnings.append(
            f"{path.name} is already quantized ({info.quantization}). Quantizing it again adds a second round of rounding "
            "error: the results are worse than the same types made from the original F16/BF16 weights. "
            "Quantize from the original model where you have it."
        )
    return source


def _inspect_hf(folder: Path) -> Source:
    config = folder / "config.json"
    if not config.is_file():
        raise RuntimeFailure(ErrorKind.MODEL_INVALID, f"{folder} is not a Hugging Face model folder: it has no config.json.")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RuntimeFailure(ErrorKind.MODEL_INVALID, f"{config} is not valid JSON ({exc}). Download the model again.") from exc
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise RuntimeFailure(ErrorKind.MODEL_INVALID, f"{index} is damaged ({exc}). Download the model again.") from exc
        files = sorted({folder / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise RuntimeFailure(
                ErrorKind.MODEL_INVALID,
                f"{folder.name} is incomplete: {len(missing)} weight file(s) listed in its index are missing ({', '.join(missing[:3])}). "
                "Finish or repeat the download.",
            )
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise RuntimeFailure(
            ErrorKind.MODEL_INVALID,
            f"{folder.name} has no .safetensors weights. Hearth converts safetensors models; download the safetensors version.",
        )
    tensors: list[TensorInfo] = []
    dtypes: set[str] = set()
    for file in files:
        for name, meta in _safetensors_header(file).items():
            if name == "__metadata__":
                continue
            shape = [int(d) for d in meta.get("shape", [])]
            n = 1
            for d in shape:
                n *= d
            tensors.append(TensorInfo(name, n, shape[-1] if shape else 1, sum(1 for d in shape if d > 1) or 1))
            dtypes.add(str(meta.get("dtype", "?")))
    name = folder.name
    marker = folder / "hearth-source.txt"  # a folder Hearth made from a GGUF file: name it after that file
    if marker.is_file():
        name = Path(marker.read_text(encoding="utf-8").strip()).stem
    elif folder.parent.name == "snapshots":  # the Hugging Face cache: models--org--name/snapshots/<hash>
        name = folder.parent.parent.name.removeprefix("models--").split("--")[-1]
    size = sum(f.stat().st_size for f in files)
    return Source("hf", folder, base_name(name), "/".join(sorted(dtypes)), size, tensors)


def _safetensors_header(file: Path) -> dict[str, dict]:
    """The JSON header of a safetensors file, after checking the file is as long as it says."""
    try:
        with file.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than its 8-byte header length")
            (length,) = struct.unpack("<Q", raw)
            if length > 100 * 2**20:
                raise ValueError("its header length is implausible")
            header = json.loads(fh.read(length))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise RuntimeFailure(ErrorKind.MODEL_INVALID, f"{file.name} is not a readable safetensors file ({exc}). Download it again.") from exc
    end = max((int(m["data_offsets"][1]) for k, m in header.items() if k != "__metadata__"), default=0)
    size = file.stat().st_size
    if 8 + length + end > size:
        raise RuntimeFailure(
            ErrorKind.MODEL_INVALID,
            f"{file.name} is truncated: it should hold {8 + length + end:,} bytes but has {size:,}. Download it again.",
        )
    return header


# ---- space ------------------------------------------------------------------------------------


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Refuse before writing when ``folder``'s disk cannot hold ``needed`` bytes and a margin."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed + SPACE_MARGIN:
        raise disk_full(folder, f"{what} needs about {_mb(needed)}; {_mb(free)} is free")


def disk_full(folder: Path, detail: str = "") -> RuntimeFailure:
    return RuntimeFailure(
        ErrorKind.DISK_FULL,
        f"Not enough disk space in {folder}{': ' + detail if detail else ''}. Free some space, or choose another output folder. "
        "Nothing was added to the library.",
    )


def is_disk_full(exc: BaseException | str) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return "No space left on device" in str(exc) or "ENOSPC" in str(exc) or "Disk quota exceeded" in str(exc)


def disk_filled(folder: Path, what: str) -> RuntimeFailure:
    """The disk filled up while a step was writing (after the free-space check had passed)."""
    return RuntimeFailure(
        ErrorKind.DISK_FULL,
        f"The disk is full: {folder} ran out of space during {what}. Free some space, or choose another output folder. "
        "Nothing was added to the library.",
    )


def is_stream_error(text: str) -> bool:
    """llama.cpp's words for any failed write of its ``std::ofstream`` ("basic_ios::clear:
    iostream error"): a full disk among other causes, which only the free space at that moment tells."""
    return "basic_ios::clear" in text or "iostream error" in text


def free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB" if n < 2**30 else f"{n / 2**30:,.1f} GB"


# ---- temporary names and the verified rename --------------------------------------------------


def staging_path(final: Path) -> Path:
    """A hidden name next to ``final`` that the library never lists, with the owner's pid in it."""
    return final.parent / f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{PART_SUFFIX}"


def sweep_stale(folder: Path) -> list[Path]:
    """Remove ``.part`` leftovers of runs whose process is gone (a killed worker, a power cut)."""
    import psutil

    removed = []
    for entry in folder.glob(f".*{PART_SUFFIX}") if folder.is_dir() else ():
        match = _PART.match(entry.name)
        if match and not psutil.pid_exists(int(match.group(1))):
            remove(entry)
            removed.append(entry)
    return removed


def remove(path: Path) -> None:
    """Delete a file or folder if it is there (cleanup must never raise over a missing file)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        log.exception("could not remove %s", path)


def free_name(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/stem+suffix``, or ``stem-2``... when that exists (never overwrite a library model)."""
    candidate = folder / f"{stem}{suffix}"
    n = 2
    while candidate.exists():
        candidate = folder / f"{stem}-{n}{suffix}"
        n += 1
    return candidate


def verify_gguf(path: Path) -> int:
    """Open a finished GGUF with gguf's reader (a fresh parse, not the library's cache); its tensor
    count. MODEL_INVALID when it does not read back whole."""
    import gguf

    try:
        reader = gguf.GGUFReader(path, "r")
        n = len(reader.tensors)
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except (ValueError, IndexError, KeyError, OSError) as exc:
        raise RuntimeFailure(ErrorKind.MODEL_INVALID, f"The new file {path.name} does not read back as a GGUF model ({exc}).") from exc
    if n == 0 or end > path.stat().st_size:
        raise RuntimeFailure(ErrorKind.MODEL_INVALID, f"The new file {path.name} is incomplete ({n} tensors, {end:,} of {path.stat().st_size:,} bytes).")
    return n


def publish(staged: Path, final: Path) -> Path:
    """Verify a staged GGUF and rename it to ``final`` (or a free name beside it); returns where it went."""
    verify_gguf(staged)
    if final.exists():
        final = free_name(final.parent, final.name.removesuffix(".gguf"), ".gguf")
    os.replace(staged, final)
    return final
