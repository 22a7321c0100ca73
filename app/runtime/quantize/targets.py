"""The targets a model can be quantized to, by name, and what each is expected to weigh.

Two kinds live in one registry so that the CLI, the wizard and the pipeline speak the same names:

- GGUF file types, made by llama.cpp's own quantizer (``llama_model_quantize``); the number is
  llama.cpp's ``llama_ftype`` (the C enum, restated here so that listing targets needs no
  llama_cpp import; a test checks every value against the bindings);
- torch weight-only schemes (``int8``, ``int4-g64``...), made by ``torch_quant``.

Sizes are estimated per tensor from the source's tensor table with llama.cpp's rules for the types
a tensor really gets (1-D tensors stay f32; a k-quant needs rows that are a multiple of 256, and a
narrower tensor falls back to a 32-block type; embeddings and the output use their own types; see
``app.runtime.planner.quant``). The mixed recipes (``_M``/``_L``) promote some tensors to a larger
type, so the estimate is "about", within roughly 10 % for ordinary models.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from app.runtime.planner import quant
from app.runtime.protocol import ErrorKind, RuntimeFailure


@dataclass(frozen=True)
class Target:
    name: str  # "Q4_K_M", "int8"
    kind: str  # "gguf" | "torch"
    ftype: int  # llama.cpp's llama_ftype for GGUF targets; -1 for torch
    description: str
    needs_imatrix: bool = False  # llama.cpp refuses these without an importance matrix

    @property
    def bits(self) -> int | None:
        """The nominal bits per weight in the name (Q4_K_M, IQ4_XS: 4); None for the float, ternary
        and microscaling types, whose names carry no such number."""
        match = re.match(r"I?Q(\d)_", self.name) if self.kind == "gguf" else None
        return int(match.group(1)) if match else None

    @property
    def imatrix_auto(self) -> bool:
        """Whether ``--imatrix auto`` measures an importance matrix for this target: every GGUF
        type of 4 bits or less, where weighing the rounding by the activations pays (measured on
        SmolLM2: Q4_K_M's and Q3_K_S's mean KL fall to about 0.65x); above 4 bits the gain is
        within noise and not worth a calibration run."""
        return self.needs_imatrix or (self.bits is not None and self.bits <= 4)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "description": self.description, "needs_imatrix": self.needs_imatrix,
                "imatrix_auto": self.imatrix_auto}


def _g(name: str, ftype: int, description: str, needs_imatrix: bool = False) -> Target:
    return Target(name, "gguf", ftype, description, needs_imatrix)


# In the order a person reads them: best quality first. The common ones carry plain words.
GGUF_TARGETS: tuple[Target, ...] = (
    _g("F16", 1, "16-bit floats: the unquantized reference, twice the size of Q8_0"),
    _g("BF16", 32, "bfloat16: the unquantized reference for models trained in bf16"),
    _g("Q8_0", 7, "8-bit: practically as good as F16, half its size"),
    _g("Q6_K", 18, "6-bit k-quant: very close to F16"),
    _g("Q5_K_M", 17, "5-bit k-quant, mixed: close to F16"),
    _g("Q5_K_S", 16, "5-bit k-quant, small"),
    _g("Q5_1", 9, "5-bit legacy"),
    _g("Q5_0", 8, "5-bit legacy"),
    _g("Q4_K_M", 15, "4-bit k-quant, mixed: the usual balance of size and quality"),
    _g("Q4_K_S", 14, "4-bit k-quant, small"),
    _g("IQ4_XS", 30, "4-bit i-quant, extra small"),
    _g("IQ4_NL", 25, "4-bit i-quant, non-linear"),
    _g("Q4_1", 3, "4-bit legacy"),
    _g("Q4_0", 2, "4-bit legacy"),
    _g("MXFP4_MOE", 38, "4-bit microscaling floats for mixture-of-experts models"),
    _g("Q3_K_L", 13, "3-bit k-quant, large: noticeably worse"),
    _g("Q3_K_M", 12, "3-bit k-quant, mixed: noticeably worse"),
    _g("IQ3_M", 27, "3-bit i-quant, mixed"),
    _g("IQ3_S", 26, "3-bit i-quant"),
    _g("Q3_K_S", 11, "3-bit k-quant, small"),
    _g("IQ3_XS", 22, "3-bit i-quant, extra small"),
    _g("IQ3_XXS", 23, "3-bit i-quant, smallest"),
    _g("Q2_K", 10, "2-bit k-quant: much worse; for when nothing else fits"),
    _g("Q2_K_S", 21, "2-bit k-quant, small", needs_imatrix=True),
    _g("IQ2_M", 29, "2-bit i-quant, mixed"),
    _g("IQ2_S", 28, "2-bit i-quant", needs_imatrix=True),
    _g("IQ2_XS", 20, "2-bit i-quant, extra small", needs_imatrix=True),
    _g("IQ2_XXS", 19, "2-bit i-quant, smallest", needs_imatrix=True),
    _g("IQ1_M", 31, "1-bit i-quant, mixed: experiments only", needs_imatrix=True),
    _g("IQ1_S", 24, "1-bit i-quant: experiments only", needs_imatrix=True),
    _g("TQ2_0", 37, "ternary, for models trained ternary (BitNet)"),
    _g("TQ1_0", 36, "ternary, for models trained ternary (BitNet)"),
)
# In llama.cpp's enum but left out: ALL_F32 (only larger than F16), GUESSED (not a type), and the
# newest types (NVFP4, Q1_0, Q2_0) whose tensor sizes the planner's table does not know yet.
LEFT_OUT_FTYPES = frozenset({"ALL_F32", "GUESSED", "MOSTLY_NVFP4", "MOSTLY_Q1_0", "MOSTLY_Q2_0"})

TORCH_TARGETS: tuple[Target, ...] = (
    Target("int8", "torch", -1, "torch: 8-bit weights, per-channel scales (for the torch backend)"),
    Target("int4-g64", "torch", -1, "torch: 4-bit weights in groups of 64 (for the torch backend)"),
    Target("int4-g128", "torch", -1, "torch: 4-bit weights in groups of 128 (for the torch backend)"),
)

TARGETS: dict[str, Target] = {t.name: t for t in (*GGUF_TARGETS, *TORCH_TARGETS)}
COMMON = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")  # what the wizard offers first


def get(name: str) -> Target:
    """The target called ``name`` (GGUF names in any case, e.g. "q4_k_m")."""
    key = name.strip()
    target = TARGETS.get(key) or TARGETS.get(key.upper()) or TARGETS.get(key.lower())
    if target is None:
        known = ", ".join(TARGETS)
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"Unknown quantization target {name!r}. Known targets: {known}.")
    return target


def parse(names: Iterable[str] | str) -> list[Target]:
    """Targets from a list or a comma-separated string, in the given order, without repeats."""
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    out: list[Target] = []
    for name in names:
        if name.strip():
            target = get(name)
            if target not in out:
                out.append(target)
    if not out:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "Name at least one quantization target, such as Q4_K_M or Q8_0.")
    return out


@dataclass(frozen=True)
class TensorInfo:
    """What a size estimate needs from one source tensor."""

    name: str
    n_elements: int
    row: int  # elements per row (the innermost dimension); the element count for a 1-D tensor
    ndim: int


_EMBEDDING_NAMES = ("token_embd.", "embed_tokens.", ".wte.", "word_embeddings.")
_OUTPUT_NAMES = ("output.weight", "lm_head.")


def tensor_type(target: Target, tensor: TensorInfo) -> str:
    """The ggml type llama.cpp gives ``tensor`` in a ``target`` file (the recipe's base rules)."""
    if tensor.ndim < 2:
        return "f32"
    ft = quant.file_type(target.name)
    if ft is None:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, f"No size rules for {target.name}.")
    if tensor.name.startswith(_OUTPUT_NAMES):
        return quant.output_type(target.name, tensor.row)
    if any(key in tensor.name for key in _EMBEDDING_NAMES):
        return quant.embedding_type(target.name, tensor.row)
    if ft.base.endswith("_K") or ft.base.startswith("iq") and ft.base != "iq4_nl":
        if tensor.row % quant.QK_K != 0:  # llama.cpp's row fallback, as for an untied embedding
            return quant.embedding_type(target.name, tensor.row)
    return ft.base


def estimate_size(target: Target, tensors: Iterable[TensorInfo], *, metadata_bytes: int = 0) -> int:
    """About how many bytes the ``target`` file (or folder, for torch) of these tensors weighs."""
    tensors = list(tensors)
    if target.kind == "torch":
        total = 0
        for t in tensors:
            if t.ndim >= 2 and not any(k in t.name for k in _EMBEDDING_NAMES):
                if target.name == "int8":
                    total += t.n_elements + 4 * (t.n_elements // max(t.row, 1))  # int8 + a float scale per row
                else:
                    group = int(target.name.rsplit("g", 1)[-1])
                    total += t.n_elements // 2 + 4 * (t.n_elements // group)  # packed int4 + scale/zero per group
            else:
                total += 2 * t.n_elements  # kept in 16-bit
        return total + metadata_bytes
    return metadata_bytes + sum(quant.tensor_bytes(tensor_type(target, t), t.n_elements) for t in tensors)
