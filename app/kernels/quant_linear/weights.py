"""Weight-only quantized weights: the state that the quantize functions make and the kernels read.

Two formats, both self-validating dataclasses (torchao style: make the quantized state once, then
run it):

* ``Int8Weight`` — int8, one symmetric scale per output channel (row).
  ``w[n, k] ≈ q[n, k] * scale[n]`` with ``q`` in [-127, 127].
* ``Int4Weight`` — 4-bit codes in groups of ``group_size`` input channels, two codes packed per
  byte (low nibble = even column, high nibble = odd column). Symmetric: ``w ≈ (c - 8) * scale``;
  asymmetric: ``w ≈ (c - zero) * scale`` with an integer zero point per group, so that 0.0 is
  exactly representable (padding and ReLU-like zeros stay zero).
  ``in_features`` need not be a multiple of the group size (SmolLM2's 576 is not a multiple of
  128): the last group is padded by repeating its last column, which leaves that group's range
  unchanged, and the kernels never read past ``in_features`` in ``x``.

Round-trip error (``dequantize(quantize(w)) - w``) is at most half a quantization step, ``scale/2``,
per element for every format: the asymmetric range always contains 0 and its zero point is rounded,
which can clip an edge value, but never by more than half a step (see tests/kernels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

INT4_GROUP_SIZES = (32, 64, 128)
# The smallest scale a quantizer stores: an all-zero row/group gets this instead of 0 so that
# dequantization never divides by zero and all-zero weights come back as exact zeros.
_MIN_SCALE = 1e-12


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class Int8Weight:
    """int8 weight with one fp32 scale per output channel."""

    qweight: torch.Tensor  # int8 [N, K], contiguous
    scale: torch.Tensor  # float32 [N]

    def __post_init__(self) -> None:
        q, s = self.qweight, self.scale
        _check(q.dtype == torch.int8, f"Int8Weight.qweight must be int8, got {q.dtype}")
        _check(
            q.dim() == 2, f"Int8Weight.qweight must be 2-D [out, in], got shape {tuple(q.shape)}"
        )
        _check(q.is_contiguous(), "Int8Weight.qweight must be contiguous")
        _check(s.dtype == torch.float32, f"Int8Weight.scale must be float32, got {s.dtype}")
        _check(
            tuple(s.shape) == (q.shape[0],),
            f"Int8Weight.scale must have shape ({q.shape[0]},), got {tuple(s.shape)}",
        )
        _check(s.is_contiguous(), "Int8Weight.scale must be contiguous")
        _check(q.device == s.device, f"Int8Weight tensors are on {q.device} and {s.device}")

    @property
    def out_features(self) -> int:
        return int(self.qweight.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.qweight.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes a kernel reads to use this weight once (codes + scales)."""
        return self.qweight.numel() + 4 * self.scale.numel()

    def to(self, device: torch.device | str) -> Int8Weight:
        return Int8Weight(self.qweight.to(device), self.scale.to(device))


@dataclass(frozen=True)
class Int4Weight:
    """Group-wise 4-bit weight, two codes per byte, fp32 scales, optional uint8 zero points."""

    packed: torch.Tensor  # uint8 [N, K_pad // 2], K_pad = n_groups * group_size
    scale: torch.Tensor  # float32 [N, n_groups]
    zero: torch.Tensor | None  # uint8 [N, n_groups] (asymmetric) or None (symmetric, zero = 8)
    group_size: int
    in_features: int  # K, the real number of input channels (<= K_pad)

    def __post_init__(self) -> None:
        p, s, z, gs = self.packed, self.scale, self.zero, self.group_size
        _check(
            gs in INT4_GROUP_SIZES,
            f"int4 group_size must be one of {INT4_GROUP_SIZES}, got {gs}",
        )
        _check(p.dtype == torch.uint8, f"Int4Weight.packed must be uint8, got {p.dtype}")
        _check(p.dim() == 2, f"Int4Weight.packed must be 2-D, got shape {tuple(p.shape)}")
        _check(p.is_contiguous(), "Int4Weight.packed must be contiguous")
        n, half = p.shape
        _check(
            (2 * half) % gs == 0,
            f"Int4Weight.packed holds {2 * half} columns, not a multiple of group_size {gs}",
        )
        n_groups = 2 * half // gs
        _check(s.dtype == torch.float32, f"Int4Weight.scale must be float32, got {s.dtype}")
        _check(
            tuple(s.shape) == (n, n_groups),
            f"Int4Weight.scale must have shape ({n}, {n_groups}), got {tuple(s.shape)}",
        )
        _check(s.is_contiguous(), "Int4Weight.scale must be contiguous")
        if z is not None:
            _check(z.dtype == torch.uint8, f"Int4Weight.zero must be uint8, got {z.dtype}")
            _check(
                tuple(z.shape) == (n, n_groups),
                f"Int4Weight.zero must have shape ({n}, {n_groups}), got {tuple(z.shape)}",
            )
            _check(z.is_contiguous(), "Int4Weight.zero must be contiguous")
            _check(z.device == p.device, f"Int4Weight tensors are on {p.device} and {z.device}")
        _check(
            2 * half - gs < self.in_features <= 2 * half,
            f"Int4Weight.in_features={self.in_features} does not fit {n_groups} groups of {gs}",
        )
        _check(p.device == s.device, f"Int4Weight tensors are on {p.device} and {s.device}")

    @property
    def symmetric(self) -> bool:
        return self.zero is None

    @property
    def out_features(self) -> int:
        return int(self.packed.shape[0])

    @property
    def n_groups(self) -> int:
        return int(self.scale.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes a kernel reads to use this weight once (codes + scales + zero points)."""
        zero = 0 if self.zero is None else self.zero.numel()
        return self.packed.numel() + 4 * self.scale.numel() + zero

    def to(self, device: torch.device | str) -> Int4Weight:
        zero = None if self.zero is None else self.zero.to(device)
        return Int4Weight(
            self.packed.to(device), self.scale.to(device), zero, self.group_size, self.in_features
        )


def quantize_int8(weight: torch.Tensor) -> Int8Weight:
    """Symmetric per-output-channel int8: ``scale[n] = max|w[n, :]| / 127``."""
    _check(weight.dim() == 2, f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    _check(weight.is_floating_point(), f"weight must be floating point, got {weight.dtype}")
    w = weight.detach().float()  # [N, K]
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(_MIN_SCALE)  # [N]
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)  # [N, K]
    return Int8Weight(q.contiguous(), scale.contiguous())


def quantize_int4(
    weight: torch.Tensor, group_size: int = 128, symmetric: bool = True
) -> Int4Weight:
    """Group-wise int4 over input channels, packed two codes per byte.

    Symmetric uses the GPTQ convention ``scale = max|w| / 7.5`` with codes in [-8, 7] (all 16
    levels used; the positive extreme clips by at most half a step). Asymmetric stretches
    ``[min(w, 0), max(w, 0)]`` over 0..15 with a rounded integer zero point.
    """
    _check(weight.dim() == 2, f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    _check(weight.is_floating_point(), f"weight must be floating point, got {weight.dtype}")
    _check(
        group_size in INT4_GROUP_SIZES,
        f"int4 group_size must be one of {INT4_GROUP_SIZES}, got {group_size}",
    )
    n, k = weight.shape
    n_groups = -(-k // group_size)
    k_pad = n_groups * group_size
    w = weight.detach().float()  # [N, K]
    if k_pad != k:
        # Repeat the last column: the padded group keeps its own min/max, so its scale is unchanged.
        w = F.pad(w.unsqueeze(0), (0, k_pad - k), mode="replicate").squeeze(0)  # [N, K_pad]
    wg = w.view(n, n_groups, group_size)  # [N, G, gs]
    if symmetric:
        scale = (wg.abs().amax(dim=2) / 7.5).clamp_min(_MIN_SCALE)  # [N, G]
        codes = torch.round(wg / scale[..., None]).clamp_(-8, 7) + 8  # [N, G, gs] in 0..15
        zero = None
    else:
        lo = wg.amin(dim=2).clamp_max(0.0)  # [N, G]
        hi = wg.amax(dim=2).clamp_min(0.0)
        scale = ((hi - lo) / 15.0).clamp_min(_MIN_SCALE)
        zero_f = torch.round(-lo / scale).clamp_(0, 15)  # [N, G]
        codes = (torch.round(wg / scale[..., None]) + zero_f[..., None]).clamp_(0, 15)
        zero = zero_f.to(torch.uint8).contiguous()
    packed = pack_int4(codes.view(n, k_pad).to(torch.uint8))  # [N, K_pad // 2]
    return Int4Weight(packed, scale.contiguous(), zero, group_size, k)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """[..., 2m] uint8 codes in 0..15 -> [..., m] bytes (even index in the low nibble)."""
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: [..., m] bytes -> [..., 2m] uint8 codes."""
    lo = packed & 0x0F
    hi = packed >> 4
    return torch.stack((lo, hi), dim=-1).flatten(-2)
