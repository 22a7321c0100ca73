"""What a finished run becomes: the adapter, the merged model, and a GGUF in the library.

- adapter: the run's ``adapter/`` folder (peft's save_pretrained + the tokenizer), small, needs the base;
- merged: the base with the adapter folded in (peft ``merge_and_unload``), a full HF folder the torch
  backend loads and the GGUF converter reads;
- gguf: the merged folder converted to F16 and quantized by the quantize pipeline
  (`app.runtime.quantize.gguf`), then placed in Hearth's models folder, which the library scans, so
  it shows in Models and chats with the llama.cpp backend.

Every output is written under a temporary name and renamed at the end; a cancelled or failed export
leaves nothing the library would list. A cancel (or a pause: an export keeps nothing to resume
from) ends as `JobStopped` cancelled, with the half-made outputs removed; the adapter, which the
training made, stays.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from app.runtime.jobs import JobStopped
from app.runtime.protocol import ErrorKind, JobStatus, RuntimeFailure

log = logging.getLogger(__name__)

MERGED = "merged"
CANCELLED = "Export cancelled; nothing was added to the library."


def _check(state: Any) -> None:
    if state is not None and state.cancelled:
        raise JobStopped(JobStatus.CANCELLED, CANCELLED)


def merge(base: str | Path, adapter: str | Path, out: str | Path, *, state: Any = None) -> Path:
    """The base model with the LoRA adapter merged in, saved as an fp32 or bf16 HF folder at ``out``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"No LoRA adapter in {adapter}; finish (or resume) the training first.")
    if state is not None:
        state.progress("merge", fraction=0.0, message="Merging the adapter into the base model")
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    _check(state)
    staging = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        merged.save_pretrained(staging)
        AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(staging)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if state is not None:
        state.progress("merge", fraction=1.0, message=f"Merged model saved to {out}")
    return out


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "finetuned"


def to_gguf(merged: str | Path, *, name: str, qtype: str, library_dir: Path, work: Path, state: Any = None) -> Path:
    """Convert the merged folder to F16 GGUF, quantize it to ``qtype`` (or keep F16), and put the
    result in ``library_dir`` where the library finds it."""
    from app.runtime.quantize.gguf import convert_hf_to_gguf, quantize_gguf

    work.mkdir(parents=True, exist_ok=True)
    f16 = convert_hf_to_gguf(Path(merged), work / f"{slug(name)}.F16.gguf", outtype="f16", state=state)
    _check(state)
    library_dir.mkdir(parents=True, exist_ok=True)
    final = library_dir / f"{slug(name)}.{qtype.upper()}.gguf"
    if qtype.upper() == "F16":
        staging = library_dir / f".{final.name}.part"
        shutil.copyfile(f16, staging)
        os.replace(staging, final)
    else:
        # The quantizer writes a hidden partial file next to ``final`` and renames it once verified.
        quantize_gguf(f16, final, qtype.upper(), state=state)
    f16.unlink(missing_ok=True)  # an intermediate of a few hundred MB: the library has its copy
    return final


def export(run_dir: str | Path, *, base: str, formats: tuple[str, ...], qtype: str = "Q8_0", name: str | None = None,
           library_dir: Path | None = None, state: Any = None) -> dict[str, Any]:
    """Export a finished run in the asked formats ("adapter", "merged", "gguf"); returns their paths."""
    from app.paths import paths

    run = Path(run_dir)
    adapter = run / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{run} has no finished adapter; train (or resume) it first.")
    unknown = set(formats) - {"adapter", "merged", "gguf"}
    if unknown or not formats:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"export formats are adapter, merged and gguf, not {', '.join(sorted(unknown)) or 'nothing'}")
    name = name or run.name
    result: dict[str, Any] = {"adapter": str(adapter)}
    made: list[Path] = []  # what this export wrote, removed again when it is cancelled
    try:
        if "merged" in formats or "gguf" in formats:
            result["merged"] = str(merge(base, adapter, run / MERGED, state=state))
            made.append(run / MERGED)
            _check(state)
        if "gguf" in formats:
            target_dir = library_dir or paths().models / "finetuned"
            made.append(run / "gguf")  # the F16 intermediate
            result["gguf"] = str(to_gguf(result["merged"], name=name, qtype=qtype, library_dir=target_dir, work=run / "gguf", state=state))
            if "merged" not in formats:  # only a step on the way to the GGUF: do not keep a full-size copy
                shutil.rmtree(result.pop("merged"), ignore_errors=True)
    except JobStopped:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
        raise JobStopped(JobStatus.CANCELLED, CANCELLED) from None
    return result
