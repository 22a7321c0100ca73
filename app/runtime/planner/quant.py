"""Facts about llama.cpp's number formats that the memory model needs, kept in one table.

Two kinds of names live here:

- ggml tensor types (``q4_K``, ``q8_0``, ``f16``...): the format of one tensor, with an exact size
  per element (a block of 32 or 256 weights plus its scales);
- llama.cpp file types (``Q4_K_M``, ``Q4_1``, ``F16``...): a recipe that mixes tensor types, as
  read from ``general.file_type`` by ``app.runtime.library`` (never parsed from a file name).

The output projection and the token embeddings are quantized by their own rules in llama.cpp's
``llama_tensor_get_type``; :func:`output_type` and :func:`embedding_type` restate those rules so the
planner can estimate their sizes before a file is opened or downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

QK_K = 256  # super-block size of the k-quants

# bytes per element of each ggml tensor type (block bytes / block elements)
TENSOR_TYPE_BYTES: dict[str, float] = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q6_K": 210 / 256,
    "q5_K": 176 / 256,
    "q5_1": 24 / 32,
    "q5_0": 22 / 32,
    "q4_K": 144 / 256,
    "q4_1": 20 / 32,
    "q4_0": 18 / 32,
    "iq4_nl": 18 / 32,
    "iq4_xs": 136 / 256,
    "mxfp4": 17 / 32,
    "q3_K": 110 / 256,
    "iq3_s": 110 / 256,
    "iq3_xxs": 98 / 256,
    "q2_K": 84 / 256,
    "iq2_s": 82 / 256,
    "iq2_xs": 74 / 256,
    "iq2_xxs": 66 / 256,
    "iq1_m": 56 / 256,
    "iq1_s": 50 / 256,
    "tq2_0": 66 / 256,
    "tq1_0": 54 / 256,
}

# ggml type ids, as llama-cpp-python's ``type_k`` / ``type_v`` want them
GGML_TYPE_IDS: dict[str, int] = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "iq4_nl": 20, "bf16": 30}

# KV cache element types llama.cpp accepts; a quantized V cache needs flash attention.
KV_TYPES: tuple[str, ...] = ("f16", "bf16", "f32", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl")


@dataclass(frozen=True)
class FileType:
    """One llama.cpp file type: its base tensor type and where it sits in quality.

    ``quality`` is an ordering key (higher is better), roughly the effective bits per weight but
    adjusted where measured perplexity disagrees with size (Q4_1 is larger than Q4_K_M and worse).
    """

    name: str
    base: str  # the tensor type most weights get, and the untied token embeddings
    quality: float


_FILE_TYPES = (
    FileType("F32", "f32", 16.0),  # no better than F16 for inference, only larger
    FileType("F16", "f16", 16.0),
    FileType("BF16", "bf16", 16.0),
    FileType("Q8_0", "q8_0", 8.5),
    FileType("Q6_K", "q6_K", 6.56),
    FileType("Q5_K_M", "q5_K", 5.7),
    FileType("Q5_K_S", "q5_K", 5.5),
    FileType("Q5_1", "q5_1", 5.4),
    FileType("Q5_0", "q5_0", 5.3),
    FileType("Q4_K_M", "q4_K", 4.85),
    FileType("MXFP4_MOE", "mxfp4", 4.7),
    FileType("Q4_K_S", "q4_K", 4.6),
    FileType("IQ4_XS", "iq4_xs", 4.5),
    FileType("IQ4_NL", "iq4_nl", 4.45),
    FileType("Q4_1", "q4_1", 4.4),
    FileType("Q4_0", "q4_0", 4.3),
    FileType("Q3_K_L", "q3_K", 4.0),
    FileType("Q3_K_M", "q3_K", 3.9),
    FileType("IQ3_M", "iq3_s", 3.8),
    FileType("IQ3_S", "iq3_s", 3.6),
    FileType("Q3_K_S", "q3_K", 3.5),
    FileType("IQ3_XS", "iq3_s", 3.4),
    FileType("IQ3_XXS", "iq3_xxs", 3.2),
    FileType("Q2_K", "q2_K", 3.0),
    FileType("Q2_K_S", "q2_K", 2.9),
    FileType("IQ2_M", "iq2_s", 2.8),
    FileType("IQ2_S", "iq2_s", 2.6),
    FileType("IQ2_XS", "iq2_xs", 2.4),
    FileType("TQ2_0", "tq2_0", 2.1),
    FileType("IQ2_XXS", "iq2_xxs", 2.2),
    FileType("IQ1_M", "iq1_m", 1.9),
    FileType("IQ1_S", "iq1_s", 1.7),
    FileType("TQ1_0", "tq1_0", 1.7),
)
FILE_TYPES: dict[str, FileType] = {ft.name: ft for ft in _FILE_TYPES}
_ALIASES = {"ALL_F32": "F32", "MOSTLY_F16": "F16"}

# The quality Hearth recommends when weights cannot all sit on the GPU: below it perplexity rises
# quickly, above it every extra byte in RAM is read once per token and costs speed.
SWEET_SPOT = "Q4_K_M"


def file_type(name: str) -> FileType | None:
    """The llama.cpp file type called ``name`` (as ``library.read_gguf`` spells it), or None."""
    key = name.strip().upper().removeprefix("MOSTLY_")
    return FILE_TYPES.get(_ALIASES.get(key, key))


def tensor_bytes(tensor_type: str, elements: int) -> int:
    return int(round(TENSOR_TYPE_BYTES[tensor_type] * elements))


def output_type(file_type_name: str, n_embd: int) -> str:
    """The tensor type llama.cpp's quantizer gives ``output.weight`` (or tied ``token_embd``).

    Restates ``llama_tensor_get_type``: a row length that is not a multiple of 256 cannot use
    k-quants and falls back to q8_0; the 1- and 2-bit IQ recipes use q5_K; every other quantized
    recipe below Q8_0 uses q6_K; F16/BF16/F32/Q8_0 files keep their own type.
    """
    ft = file_type(file_type_name)
    if ft is None:
        return "q6_K" if n_embd % QK_K == 0 else "q8_0"
    if ft.base in ("f32", "f16", "bf16", "q8_0"):
        return ft.base
    if n_embd % QK_K != 0:
        return "q8_0"
    if ft.name in ("IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"):
        return "q5_K"
    return "q6_K"


def embedding_type(file_type_name: str, n_embd: int) -> str:
    """The tensor type of an untied ``token_embd.weight`` (the file's base type, with llama.cpp's
    exceptions for the smallest recipes)."""
    ft = file_type(file_type_name)
    if ft is None:
        return "q6_K" if n_embd % QK_K == 0 else "q8_0"
    if ft.name in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
        return "q2_K"
    if ft.name in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
        return "iq3_s"
    if ft.name in ("TQ1_0", "TQ2_0"):
        return "q4_K"
    if n_embd % QK_K != 0:
        # k-quant rows must be multiples of 256; llama.cpp falls back to a 32-element block type
        return _ROW_FALLBACK.get(ft.base, ft.base)
    return ft.base


_ROW_FALLBACK = {
    "q2_K": "iq4_nl", "q3_K": "iq4_nl", "iq2_xxs": "iq4_nl", "iq2_xs": "iq4_nl", "iq2_s": "iq4_nl",
    "iq3_xxs": "iq4_nl", "iq3_s": "iq4_nl", "iq1_s": "iq4_nl", "iq1_m": "iq4_nl", "iq4_xs": "iq4_nl",
    "q4_K": "q5_0", "q5_K": "q5_1", "q6_K": "q8_0",
}


def kv_bytes_per_element(kv_type: str) -> float:
    if kv_type not in KV_TYPES:
        raise ValueError(f"unknown KV cache type {kv_type!r} (known: {', '.join(KV_TYPES)})")
    return TENSOR_TYPE_BYTES[kv_type]


def kv_is_quantized(kv_type: str) -> bool:
    return kv_type not in ("f16", "bf16", "f32")


def quality(name: str, *, bits_per_weight: float | None = None) -> float:
    """Ordering key for a file type; an unknown name ranks by its measured bits per weight, a
    little below known types of the same size (Hearth cannot vouch for it)."""
    ft = file_type(name)
    if ft is not None:
        return ft.quality
    return (bits_per_weight or 0.0) - 0.5
