"""GPTQ for the torch int4/int8 targets (Frantar et al., 2022), written on torch.

Round-to-nearest rounds every weight on its own. GPTQ rounds the columns of a weight one by one
and pushes each column's rounding error onto the columns not rounded yet, in proportion to how the
layer's inputs correlate (the inverse of the Hessian ``H = 2 X^T X / n`` of the layer's squared
output error), so the *output* of the layer stays close even where single weights do not. Per
layer:

1. ``H`` from the calibration activations that reach it (through the already-quantized layers
   before it: the model is walked one decoder layer at a time, its inputs kept between layers);
2. dampening: ``H += damp * mean(diag H) * I`` (and a never-activated column gets ``H_jj = 1``);
3. ``U = cholesky(H^-1)^T`` (upper); for each block of columns, for each column ``j``: round it
   with the scheme's quantizer, ``err = (w_j - q_j) / U_jj``, and subtract ``err * U_j,k`` from
   every later column ``k`` of the block; the block's errors then update the columns after it;
4. groups (int4): a group's scale (and zero point) is taken when its first column is reached,
   from the columns as they are then (error feedback already applied), the same formula as
   round-to-nearest. No act-order: the int4 format keeps groups in column order (no ``g_idx``).

The output is the very state :mod:`app.kernels.quant_linear.weights` defines (``Int8Weight`` /
``Int4Weight``), so ``torch_quant.save_quantized`` / ``load_quantized`` and the bundled kernels run
it unchanged. With ``H = I`` no error moves, and GPTQ gives round-to-nearest bit for bit (a test
holds it to that).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from app.kernels.quant_linear import Int4Weight, Int8Weight, QuantizedWeight, dequantize_int4, dequantize_int8
from app.kernels.quant_linear.weights import _MIN_SCALE, pack_int4
from app.runtime.jobs import JobContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GPTQConfig:
    """The algorithm's settings.

    ``damp`` is ten times the paper's 0.01: the paper calibrates on ~260k tokens, Hearth on a few
    thousand, and with so few rows per input dimension the 1,536-wide ``down_proj`` of SmolLM2
    overfits its calibration (measured: output error 0.25x round-to-nearest's on the calibration
    rows, 1.3x on held-out text, at 2,048 rows and damp 0.01; 0.67x held-out at 8,192 rows and 0.1).
    """

    damp: float = 0.1  # fraction of the mean diagonal added to H
    block_size: int = 128  # columns updated lazily together; rounded up to a multiple of the group

    def __post_init__(self) -> None:
        if not 0.0 < self.damp < 1.0:
            raise ValueError(f"GPTQ dampening must be in (0, 1), got {self.damp}")
        if self.block_size < 1:
            raise ValueError(f"GPTQ block size must be positive, got {self.block_size}")


# ---- one weight ----------------------------------------------------------------------------------


def _prepare_inverse(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of the dampened inverse Hessian (float64 for the factorizations)."""
    h = hessian.detach().to(torch.float64).clone()  # [K, K]
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    k = h.shape[0]
    h += damp * torch.diagonal(h).mean() * torch.eye(k, dtype=h.dtype, device=h.device)
    lower = torch.linalg.cholesky(h)
    inverse = torch.cholesky_inverse(lower)
    return torch.linalg.cholesky(inverse, upper=True).to(torch.float32)  # [K, K]


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int = 0, symmetric: bool = True, *, config: GPTQConfig | None = None) -> QuantizedWeight:
    """GPTQ-quantize one ``[out, in]`` weight against its ``[in, in]`` Hessian, into the format
    round-to-nearest makes for the same (bits, group_size, symmetric). Rows are independent, so
    weights that share an input (q/k/v, gate/up) may be stacked into one call."""
    config = config or GPTQConfig()
    if bits not in (4, 8):
        raise ValueError(f"GPTQ takes 8 or 4 bits, got {bits}")
    w = weight.detach().float().clone()  # [N, K]
    n, k = w.shape
    u = _prepare_inverse(hessian.to(w.device), config.damp)  # [K, K]
    if bits == 8:
        group_size = 0
        row_scale = (w.abs().amax(dim=1) / 127.0).clamp_min(_MIN_SCALE)  # [N], from the original row
        codes = torch.empty(n, k, dtype=torch.int8, device=w.device)
        state = _Columns(bits, 0, symmetric, codes, row_scale=row_scale)
        step = config.block_size
    else:
        n_groups = -(-k // group_size)
        codes = torch.empty(n, k, dtype=torch.uint8, device=w.device)
        state = _Columns(bits, group_size, symmetric, codes, scales=torch.empty(n, n_groups, device=w.device), zeros=torch.empty(n, n_groups, device=w.device))
        step = -(-config.block_size // group_size) * group_size  # groups never straddle blocks

    for b0 in range(0, k, step):
        b1 = min(b0 + step, k)
        block = w[:, b0:b1].clone()  # [N, B], error feedback applied in place
        with _one_thread(w.device):
            errors = state.block(block, u[b0:b1, b0:b1], b0)  # [N, B]
        if b1 < k:
            w[:, b1:].addmm_(errors, u[b0:b1, b1:], alpha=-1.0)

    if bits == 8:
        return Int8Weight(codes.contiguous(), state.row_scale.contiguous())
    k_pad = n_groups * group_size
    if k_pad != k:  # the same padding as round-to-nearest: repeat the last column
        codes = F.pad(codes.float().unsqueeze(0), (0, k_pad - k), mode="replicate").squeeze(0).to(torch.uint8)
    zero_state = None if symmetric else state.zeros.to(torch.uint8).contiguous()
    return Int4Weight(pack_int4(codes), state.scales.contiguous(), zero_state, group_size, k)


class _Columns:
    """The column-by-column part: round each column of a block, feed its error forward."""

    def __init__(self, bits: int, group_size: int, symmetric: bool, codes: torch.Tensor, *, row_scale: torch.Tensor | None = None, scales: torch.Tensor | None = None, zeros: torch.Tensor | None = None) -> None:
        self.bits, self.group_size, self.symmetric, self.codes = bits, group_size, symmetric, codes
        self.row_scale, self.scales, self.zeros = row_scale, scales, zeros
        self.scale: torch.Tensor | None = None
        self.zero: torch.Tensor | None = None

    def block(self, block: torch.Tensor, ub: torch.Tensor, b0: int) -> torch.Tensor:
        errors = torch.zeros_like(block)
        for i in range(block.shape[1]):
            col = b0 + i
            x = block[:, i]  # [N]
            deq = self._round(x, col, block[:, i : i + self.group_size])
            err = (x - deq) / ub[i, i]
            block[:, i:].addr_(err, ub[i, i:], alpha=-1.0)
            errors[:, i] = err
        return errors

    def _round(self, x: torch.Tensor, col: int, group: torch.Tensor) -> torch.Tensor:
        """Store column ``col``'s codes; return its dequantized values."""
        if self.bits == 8:
            assert self.row_scale is not None
            q = torch.round(x / self.row_scale).clamp_(-127, 127)
            self.codes[:, col] = q.to(torch.int8)
            return q * self.row_scale
        assert self.scales is not None and self.zeros is not None
        if col % self.group_size == 0:  # a new group: its range from the columns as they are now
            self.scale, self.zero = _group_params(group, self.symmetric)
            self.scales[:, col // self.group_size] = self.scale
            self.zeros[:, col // self.group_size] = self.zero
        assert self.scale is not None and self.zero is not None
        if self.symmetric:
            c = torch.round(x / self.scale).clamp_(-8, 7) + 8
        else:
            c = (torch.round(x / self.scale) + self.zero).clamp_(0, 15)
        self.codes[:, col] = c.to(torch.uint8)
        return (c - self.zero) * self.scale


class _one_thread:
    """One intra-op thread on the CPU while columns are rounded: each op touches a few thousand
    floats, where thread hand-offs cost more than the work (measured 10-50x slower with two
    threads on a busy two-core machine). The matmuls around it keep every thread."""

    def __init__(self, device: torch.device) -> None:
        self.cpu = device.type == "cpu"
        self.threads = 0

    def __enter__(self) -> None:
        if self.cpu:
            self.threads = torch.get_num_threads()
            torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        if self.cpu:
            torch.set_num_threads(self.threads)


def _group_params(g: torch.Tensor, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of one group of columns ``[N, gs]``: round-to-nearest's formulas."""
    if symmetric:
        return (g.abs().amax(dim=1) / 7.5).clamp_min(_MIN_SCALE), torch.full_like(g[:, 0], 8.0)
    lo = g.amin(dim=1).clamp_max(0.0)
    hi = g.amax(dim=1).clamp_min(0.0)
    scale = ((hi - lo) / 15.0).clamp_min(_MIN_SCALE)
    return scale, torch.round(-lo / scale).clamp_(0, 15)


def dequantize(qw: QuantizedWeight) -> torch.Tensor:
    return dequantize_int8(qw) if isinstance(qw, Int8Weight) else dequantize_int4(qw)


# ---- a whole model -------------------------------------------------------------------------------

DEFAULT_CHUNKS = 16  # 8,192 calibration tokens: see GPTQConfig.damp for why not fewer


def calibration_windows(folder: Path, *, data: str | None = None, chunks: int = DEFAULT_CHUNKS, chunk_size: int = 512) -> list[list[int]]:
    """Calibration token windows for GPTQ from the same text the importance matrix uses (the
    shipped Volume I of *Persuasion*, never the evaluation's Volume II, or a person's file)."""
    from transformers import AutoTokenizer

    from app.runtime.quantize.imatrix import calibration_chunks, read_calibration

    text, _ = read_calibration(data)
    return calibration_chunks(AutoTokenizer.from_pretrained(folder), text, chunks, chunk_size)



class _Captured(Exception):
    """Raised by the first layer's hook once it has its inputs: the rest of the forward is not needed."""


class _Hessian:
    """Forward pre-hook summing ``X^T X`` and the row count of one linear layer's input."""

    def __init__(self, module: nn.Linear) -> None:
        k = module.in_features
        self.xtx = torch.zeros(k, k, dtype=torch.float32, device=module.weight.device)
        self.rows = 0
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()  # [rows, K]
        self.xtx.addmm_(x.T, x)
        self.rows += int(x.shape[0])

    def hessian(self) -> torch.Tensor:
        self.handle.remove()
        return self.xtx * (2.0 / max(self.rows, 1))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder layers: ``get_decoder().layers`` where it exists, else its
    longest ``ModuleList``."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(decoder, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers):
        return layers
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError("this model has no stack of layers GPTQ can walk")
    return max(lists, key=len)


def gptq_weights(model: nn.Module, chunks: Sequence[Sequence[int]], bits: int, group_size: int = 0, symmetric: bool = True, *, skip: set[int] | None = None, ctx: JobContext | None = None, config: GPTQConfig | None = None) -> dict[int, QuantizedWeight]:
    """GPTQ state for every ``nn.Linear`` inside the decoder layers, keyed by ``id(module)``.

    The model is changed in place as it goes: each quantized weight is replaced by its dequantized
    value, so that the next layer's Hessian sees what the quantized model will compute. ``skip``:
    ids of modules to leave alone (the embeddings and head, which torch_quant keeps in full precision).
    """
    skip = skip or set()
    layers = decoder_layers(model)
    device = next(model.parameters()).device
    inputs: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def capture(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        inputs.append((tuple(a.detach() if torch.is_tensor(a) else a for a in args), dict(kwargs)))
        raise _Captured

    handle = layers[0].register_forward_pre_hook(capture, with_kwargs=True)
    run = model.get_decoder() if hasattr(model, "get_decoder") else model
    try:
        with torch.inference_mode():
            for chunk in chunks:
                try:
                    run(torch.tensor([list(chunk)], device=device), use_cache=False)
                except _Captured:
                    pass
    finally:
        handle.remove()

    weights: dict[int, QuantizedWeight] = {}
    for index, layer in enumerate(layers):
        if ctx is not None:
            ctx.check("GPTQ was cancelled.")
        linears = [m for m in layer.modules() if isinstance(m, nn.Linear) and id(m) not in skip]
        groups = _shared_inputs(layer, linears, inputs[0])
        hooks = [_Hessian(group[0]) for group in groups]  # one Hessian per distinct input
        with torch.inference_mode():
            for args, kwargs in inputs:
                layer(*args, **kwargs)
        for group, hook in zip(groups, hooks):
            stacked = torch.cat([m.weight.detach() for m in group])  # rows are independent in GPTQ
            qw = gptq_quantize(stacked, hook.hessian(), bits, group_size, symmetric, config=config)
            for module, part in zip(group, split_rows(qw, [m.out_features for m in group])):
                weights[id(module)] = part
                with torch.no_grad():
                    module.weight.copy_(dequantize(part).to(module.weight.dtype))
        with torch.inference_mode():
            outputs = [layer(*args, **kwargs) for args, kwargs in inputs]
        inputs = [((out[0] if isinstance(out, tuple) else out, *args[1:]), kwargs) for out, (args, kwargs) in zip(outputs, inputs)]
        if ctx is not None:
            ctx.progress("gptq", done=index + 1, total=len(layers), unit="layers", message=f"GPTQ: layer {index + 1}/{len(layers)}")
    return weights


def _shared_inputs(layer: nn.Module, linears: list[nn.Linear], sample: tuple[tuple[Any, ...], dict[str, Any]]) -> list[list[nn.Linear]]:
    """The layer's linears grouped by the input tensor they read (q/k/v read one, gate/up
    another), seen on one sample forward; each group shares one Hessian."""
    seen: dict[int, Any] = {}  # module id -> its input tensor, held so no other tensor reuses its memory

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        seen.setdefault(id(module), args[0])

    handles = [m.register_forward_pre_hook(hook) for m in linears]
    try:
        with torch.inference_mode():
            layer(*sample[0], **sample[1])
    finally:
        for handle in handles:
            handle.remove()
    groups: list[list[nn.Linear]] = []
    owners: list[Any] = []
    for m in linears:
        x = seen.get(id(m))
        for owner, group in zip(owners, groups):
            if x is not None and x is owner:
                group.append(m)
                break
        else:
            owners.append(x)
            groups.append([m])
    return [g for g, x in zip(groups, owners) if x is not None]


def split_rows(qw: QuantizedWeight, sizes: Sequence[int]) -> list[QuantizedWeight]:
    """A stacked quantized weight cut back into its parts' rows."""
    parts: list[QuantizedWeight] = []
    start = 0
    for size in sizes:
        rows = slice(start, start + size)
        if isinstance(qw, Int8Weight):
            parts.append(Int8Weight(qw.qweight[rows].contiguous(), qw.scale[rows].contiguous()))
        else:
            zero = None if qw.zero is None else qw.zero[rows].contiguous()
            parts.append(Int4Weight(qw.packed[rows].contiguous(), qw.scale[rows].contiguous(), zero, qw.group_size, qw.in_features))
        start += size
    return parts
