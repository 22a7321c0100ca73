"""Loading a transformers model for the torch backend: check the folder, then build it as the plan says.

A damaged download is the common failure, and transformers reports it deep inside safetensors
("incomplete metadata", "unexpected EOF") without naming the file. So the folder is checked first,
cheaply: every shard the index names is there, and every safetensors file is as long as its own
header says (8 bytes of header length, the JSON header, then the tensors' data up to the largest
end offset). Only then does transformers load it.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.runtime.protocol import ErrorKind, RuntimeFailure

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
BNB_SCHEMES = ("bnb-int8", "bnb-nf4")
_MAX_HEADER = 100 * 2**20  # safetensors refuses headers over 100 MB as well


def _invalid(message: str) -> RuntimeFailure:
    return RuntimeFailure(ErrorKind.MODEL_INVALID, message)


def check_folder(folder: str | Path) -> list[Path]:
    """The folder's safetensors files, each checked complete; MODEL_INVALID naming the file otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RuntimeFailure(ErrorKind.MODEL_NOT_FOUND, f"There is no model folder at {folder}.")
    if not (folder / "config.json").is_file():
        raise _invalid(f"{folder.name} has no config.json, so it is not a Hugging Face model folder. Download the model again.")
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _invalid(f"{INDEX_FILE} in {folder.name} cannot be read ({exc}). Download the model again.") from exc
        files = [folder / name for name in names]
    else:
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise _invalid(
                f"{SINGLE_FILE} is missing from {folder}: the folder has a config.json but no weights "
                f"(*.safetensors). The download may have been interrupted; download the model again."
            )
    for path in files:
        check_safetensors(path)
    return files


def check_safetensors(path: Path) -> None:
    """Raise MODEL_INVALID when ``path`` is missing, or shorter (or longer) than its header says."""
    if not path.is_file():
        raise _invalid(f"{path.name} is missing from {path.parent}. The download may have been interrupted; download the model again.")
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ValueError("the file is shorter than its 8-byte header length")
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > min(_MAX_HEADER, size - 8):
                raise ValueError(f"its header claims {header_len:,} bytes")
            header = json.loads(fh.read(header_len))
        ends = [int(t["data_offsets"][1]) for name, t in header.items() if name != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise _invalid(f"{path.name} in {path.parent} is damaged or truncated ({exc}). Download the model again.") from exc
    expected = 8 + header_len + max(ends, default=0)
    if size != expected:
        raise _invalid(
            f"{path.name} in {path.parent} is {'truncated' if size < expected else 'damaged'}: it should hold "
            f"{expected:,} bytes but has {size:,}. Download the model again."
        )


def _is_quantized(folder: Path) -> bool:
    """Whether config.json records a Hearth weight-only scheme (never guessed from the name)."""
    from app.runtime.quantize.torch_quant import METADATA_KEY

    try:
        return bool(json.loads((folder / "config.json").read_text(encoding="utf-8")).get(METADATA_KEY))
    except (OSError, ValueError):
        return False


def load_model(folder: Path, settings: Mapping[str, Any]) -> tuple[Any, Any]:
    """(model, tokenizer) for ``folder`` with the plan's dtype, device map and weight quantization."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_folder(folder)
    if _is_quantized(folder):  # made by Hearth's quantize wizard: already int8/int4, rebuilt as saved
        from app.runtime.quantize.torch_quant import load_quantized

        return load_quantized(folder).eval(), AutoTokenizer.from_pretrained(folder)
    dtype = getattr(torch, str(settings.get("dtype", "float32")))
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": settings.get("attn_implementation", "sdpa")}
    device_map = settings.get("device_map")
    if device_map:
        kwargs["device_map"] = dict(device_map)
        if settings.get("max_memory"):
            kwargs["max_memory"] = {(int(k) if str(k).isdigit() else k): v for k, v in dict(settings["max_memory"]).items()}
        if "disk" in set(device_map.values()):
            offload = Path(str(settings.get("offload_folder") or ""))
            if not str(offload) or str(offload) == ".":
                raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "a device map with disk offload needs an offload folder")
            offload.mkdir(parents=True, exist_ok=True)
            kwargs["offload_folder"] = str(offload)
    scheme = settings.get("weight_quant")
    if scheme in BNB_SCHEMES:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True)
            if scheme == "bnb-int8"
            else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        )
    adapter = settings.get("adapter")  # a fine-tune's LoRA adapter over this base (`app.runtime.adapters`)
    try:
        tokenizer = AutoTokenizer.from_pretrained(adapter or folder)  # the run saved the tokenizer it trained with
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        if adapter:
            model = apply_adapter(model, Path(adapter), merge=scheme not in BNB_SCHEMES)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as exc:
        log.exception("transformers could not load %s", folder)
        raise RuntimeFailure(
            ErrorKind.LOAD_FAILED,
            f"transformers could not load {folder.name}: {exc}. The model's architecture may need a newer "
            f"transformers, or the folder is incomplete.",
        ) from exc
    if scheme and scheme not in BNB_SCHEMES:
        from app.runtime.quantize.torch_quant import quantize_model

        quantize_model(model, scheme)
    model.eval()
    return model, tokenizer


def apply_adapter(model: Any, adapter: Path, *, merge: bool) -> Any:
    """The base with the LoRA adapter applied (peft). ``merge``: folded into the weights in memory,
    so decoding costs what the base costs and a weight-only scheme quantizes the tuned weights; a
    bitsandbytes base keeps the adapter beside its quantized layers instead."""
    from peft import PeftModel

    tuned = PeftModel.from_pretrained(model, str(adapter))
    log.info("applied the adapter %s (%s)", adapter, "merged" if merge else "unmerged")
    return tuned.merge_and_unload() if merge else tuned


def input_device(model: Any) -> Any:
    """Where input ids go: the embedding's device (the CPU when it is offloaded or on disk)."""
    import torch

    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        first = device_map.get("model.embed_tokens", next(iter(device_map.values())))
        if isinstance(first, int):
            return torch.device("cuda", first)
        if isinstance(first, str) and first not in ("cpu", "disk"):
            return torch.device(first)
        return torch.device("cpu")
    return next(model.parameters()).device
