"""Importance-matrix files as llama.cpp's ``llama-imatrix`` writes and reads them.

Two formats exist, and a person may bring either:

* GGUF (llama.cpp since mid-2025, the default): no model metadata, ``general.type = "imatrix"``,
  ``imatrix.datasets`` (the calibration files, strings), ``imatrix.chunk_count`` and
  ``imatrix.chunk_size`` (u32), and per weight ``W`` (a GGUF tensor name such as
  ``blk.0.attn_q.weight``) the F32 tensors ``W.in_sum2`` (ggml shape ``[columns, n_mat]``: the sum
  over every input row of the squared activation, per input column, per expert) and ``W.counts``
  (``[1, n_mat]``: how many rows were summed), and in newer files ``W.in_sum`` (the plain sums).
* the older ``.dat``: ``int32 n_entries``, then per entry ``int32 len, name, int32 ncall,
  int32 nval, float32[nval]`` holding the *mean* square times ``ncall`` (the number of chunks),
  then ``int32 last_chunk`` and ``int32 len, dataset``. The chunk size is not stored.

What llama.cpp's quantizer wants from either is the per-column mean square (:meth:`Entry.means`).
Only the file format is llama.cpp's; this module is Hearth's own reader and writer over the
``gguf`` package.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_CHUNK_SIZE = 512  # llama-imatrix's default context; the .dat format does not record it
GGUF_MAGIC = b"GGUF"
KEY_TYPE = "general.type"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUM2, COUNTS, SUM = ".in_sum2", ".counts", ".in_sum"


class ImatrixFormatError(ValueError):
    """The file is neither a readable GGUF imatrix nor a readable .dat one; the message says why."""


@dataclass
class Entry:
    """One weight's statistics: ``sum2`` float32 [n_mat, columns], ``counts`` float32 [n_mat]
    (n_mat is 1 for a dense weight, the number of experts for a merged MoE weight)."""

    sum2: np.ndarray
    counts: np.ndarray
    sum: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.sum2 = np.ascontiguousarray(np.asarray(self.sum2, dtype=np.float32).reshape(len(np.atleast_1d(self.counts)), -1))
        self.counts = np.ascontiguousarray(np.atleast_1d(np.asarray(self.counts, dtype=np.float32)))
        if self.sum is not None:
            self.sum = np.ascontiguousarray(np.asarray(self.sum, dtype=np.float32).reshape(self.sum2.shape))

    @property
    def columns(self) -> int:
        return int(self.sum2.shape[1])

    def means(self) -> np.ndarray:
        """Flat float32 per-column mean squares, expert after expert, as ``llama_model_quantize``
        takes them. An expert the calibration never routed to gets 1.0 everywhere (equal weights),
        as llama.cpp's quantize tool does: all-zero weights would leave its quantizers nothing to
        fit."""
        c = np.where(self.counts > 0, self.counts, 1.0)
        means = np.where(self.counts[:, None] > 0, self.sum2 / c[:, None], 1.0)
        return np.ascontiguousarray(means.reshape(-1), dtype=np.float32)


@dataclass
class Imatrix:
    entries: dict[str, Entry]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def means(self) -> dict[str, np.ndarray]:
        return {name: e.means() for name, e in self.entries.items()}


# ---- reading -------------------------------------------------------------------------------------


def read_imatrix(path: str | Path) -> Imatrix:
    """Either format, told apart by the GGUF magic (as llama.cpp does: not a GGUF -> legacy)."""
    path = Path(path)
    with path.open("rb") as fh:
        magic = fh.read(4)
    return _read_gguf(path) if magic == GGUF_MAGIC else _read_dat(path)


def _read_gguf(path: Path) -> Imatrix:
    import gguf

    try:
        reader = gguf.GGUFReader(path, "r")
    except (ValueError, OSError, struct.error) as exc:
        raise ImatrixFormatError(f"{path.name} is not a readable GGUF file: {exc}") from exc
    parts: dict[str, dict[str, np.ndarray]] = {}
    for t in reader.tensors:
        for suffix in (SUM2, COUNTS, SUM):  # ".in_sum2" before ".in_sum": the longer suffix first
            if t.name.endswith(suffix):
                ne0 = int(t.shape[0])  # GGUFReader gives ggml order: ne0 = columns
                parts.setdefault(t.name.removesuffix(suffix), {})[suffix] = np.asarray(t.data, dtype=np.float32).reshape(-1, ne0)
                break
    entries: dict[str, Entry] = {}
    for name, got in parts.items():
        if SUM2 not in got or COUNTS not in got:
            raise ImatrixFormatError(f"{path.name}: '{name}' has no matching '{SUM2}' and '{COUNTS}' tensors")
        sum2, counts = got[SUM2], got[COUNTS].reshape(-1)
        if sum2.shape[0] != counts.size:
            raise ImatrixFormatError(f"{path.name}: '{name}' has {sum2.shape[0]} sum rows but {counts.size} counts")
        plain = got.get(SUM)
        if plain is not None and plain.size != sum2.size:
            raise ImatrixFormatError(f"{path.name}: '{name}' has sums and squared sums of different sizes")
        entries[name] = Entry(sum2, counts, plain)
    if not entries:
        raise ImatrixFormatError(f"{path.name} has no importance-matrix entries (no '{SUM2}' tensors); make one with `hearth imatrix` or llama-imatrix")
    fields = reader.fields

    def scalar(key: str, default: int) -> int:
        f = fields.get(key)
        return int(f.contents()) if f is not None else default

    datasets = fields.get(KEY_DATASETS)
    return Imatrix(
        entries,
        [str(s) for s in datasets.contents()] if datasets is not None else [],
        scalar(KEY_CHUNK_COUNT, 0),
        scalar(KEY_CHUNK_SIZE, DEFAULT_CHUNK_SIZE),
    )


def _read_dat(path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Imatrix:
    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> tuple[int, ...]:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise ImatrixFormatError(f"{path.name} ends early (byte {pos} of {len(data)}): not an imatrix file")
        values = struct.unpack_from(fmt, data, pos)
        pos += size
        return values

    (n_entries,) = take("<i")
    if not 0 < n_entries < 1_000_000:
        raise ImatrixFormatError(f"{path.name} is neither a GGUF nor a legacy .dat importance matrix (it would hold {n_entries} entries)")
    entries: dict[str, Entry] = {}
    for _ in range(n_entries):
        (length,) = take("<i")
        if not 0 < length < 4096:
            raise ImatrixFormatError(f"{path.name}: an entry name of {length} bytes; the file is damaged")
        name = data[pos : pos + length].decode("utf-8", "replace")
        pos += length
        ncall, nval = take("<ii")
        if nval < 1:
            raise ImatrixFormatError(f"{path.name}: '{name}' has no values")
        values = np.asarray(take(f"<{nval}f"), dtype=np.float32)
        calls = max(ncall, 1)
        # stored: mean square x ncall; kept here as llama.cpp reloads it: sums over ncall chunks
        entries[name] = Entry(values.reshape(1, -1) / calls * (calls * chunk_size), np.asarray([calls * chunk_size], np.float32))
    chunk_count = 0
    dataset: list[str] = []
    if pos + 4 <= len(data):
        (chunk_count,) = take("<i")
        if pos + 4 <= len(data):
            (length,) = take("<i")
            if 0 <= length <= len(data) - pos:
                dataset = [data[pos : pos + length].decode("utf-8", "replace")]
    return Imatrix(entries, dataset, chunk_count, chunk_size)


# ---- writing -------------------------------------------------------------------------------------


def write_imatrix(path: str | Path, imatrix: Imatrix, *, atomic: bool = True) -> Path:
    """Write ``imatrix`` as llama-imatrix's GGUF (names sorted, as it does).

    ``atomic``: through a temporary sibling renamed into place, so that a reader never sees half a
    file; a child job writing its own ``.part`` file (which the parent removes on a cancel) passes
    False, so that a kill leaves no temporary file the parent does not know of.
    """
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if atomic:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
        os.close(fd)
    else:
        tmp = str(path)
    try:
        writer = gguf.GGUFWriter(tmp, arch="")
        writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)  # an imatrix names no architecture
        writer.add_type(gguf.GGUFType.IMATRIX)
        writer.add_array(KEY_DATASETS, list(imatrix.datasets) or [""])
        writer.add_uint32(KEY_CHUNK_COUNT, int(imatrix.chunk_count))
        writer.add_uint32(KEY_CHUNK_SIZE, int(imatrix.chunk_size))
        for name in sorted(imatrix.entries):
            e = imatrix.entries[name]
            n_mat = e.counts.size
            writer.add_tensor(name + SUM2, e.sum2.reshape(n_mat, -1))  # numpy [n_mat, cols] = ggml [cols, n_mat]
            writer.add_tensor(name + COUNTS, e.counts.reshape(n_mat, 1))
            if e.sum is not None:
                writer.add_tensor(name + SUM, e.sum.reshape(n_mat, -1))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        if atomic:
            os.replace(tmp, path)
    finally:
        if atomic and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def means_from_file(path: str | Path) -> Mapping[str, np.ndarray]:
    """What ``llama_model_quantize`` takes: per-column mean squares by tensor name, from either format."""
    return read_imatrix(path).means()
