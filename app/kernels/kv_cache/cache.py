"""A KIVI-style quantized KV cache for one attention layer (arXiv:2402.02750).

Keys are quantized per channel over groups of ``group_size`` tokens (key outliers live in fixed
channels, so a channel shares one scale across a group of tokens); values are quantized per token
over the head dimension. Both are asymmetric (``x ≈ code * scale + min``) with 8- or 4-bit codes;
4-bit codes are packed two per byte along the head dimension (even channel in the low nibble).

The newest tokens stay in full precision in a *tail*: after every append the tail holds at least
``residual`` tokens (all of them while fewer have been seen) and fewer than
``residual + group_size``. When it reaches ``residual + group_size``, its oldest ``group_size``
tokens are quantized as one key group and moved to the quantized store. Every quantized token is
therefore in a complete group, and the quantized length is always a multiple of ``group_size``.

Quantize-on-append is plain torch on purpose, for both dispatch paths: it runs once per
``group_size`` tokens on a ``group_size x head_dim`` slab per head, so its cost is a handful of
launches, not bandwidth, and a Triton kernel would not make decoding measurably faster. The
decode-attention kernel, which reads the whole cache on every token, is the one that matters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KV_BITS = (4, 8)
KV_GROUP_SIZES = (16, 32, 64, 128)
_MIN_SCALE = 1e-8  # a constant channel/token gets this scale instead of 0 (its codes are all 0)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """[..., 2m] uint8 codes in 0..15 -> [..., m] bytes (even index in the low nibble)."""
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous()


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """[..., m] bytes -> [..., 2m] uint8 codes."""
    return torch.stack((packed & 0x0F, packed >> 4), dim=-1).flatten(-2)


def quantize_key_groups(k: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, ...]:
    """Per-channel asymmetric quantization of whole key groups.

    k: [B, H, n * G, D] -> codes uint8 [B, H, n * G, D or D/2], scale and min fp32 [B, H, n, D].
    """
    b, h, t, d = k.shape
    n = t // group_size
    kg = k.float().view(b, h, n, group_size, d)  # [B, H, n, G, D]
    lo = kg.amin(dim=3)  # [B, H, n, D]
    hi = kg.amax(dim=3)
    qmax = (1 << bits) - 1
    scale = ((hi - lo) / qmax).clamp_min(_MIN_SCALE)
    codes = torch.round((kg - lo[:, :, :, None]) / scale[:, :, :, None]).clamp_(0, qmax)
    codes = codes.to(torch.uint8).view(b, h, t, d)
    if bits == 4:
        codes = pack_nibbles(codes)
    return codes, scale, lo


def quantize_tokens(v: torch.Tensor, bits: int) -> tuple[torch.Tensor, ...]:
    """Per-token asymmetric quantization over the head dimension.

    v: [B, H, T, D] -> codes uint8 [B, H, T, D or D/2], scale and min fp32 [B, H, T].
    """
    vf = v.float()
    lo = vf.amin(dim=-1)  # [B, H, T]
    hi = vf.amax(dim=-1)
    qmax = (1 << bits) - 1
    scale = ((hi - lo) / qmax).clamp_min(_MIN_SCALE)
    codes = torch.round((vf - lo[..., None]) / scale[..., None]).clamp_(0, qmax).to(torch.uint8)
    if bits == 4:
        codes = pack_nibbles(codes)
    return codes, scale, lo


@dataclass(eq=False)
class QuantizedKVCache:
    """One layer's quantized KV cache; make it with :meth:`empty`, grow it with :meth:`append`."""

    bits: int
    group_size: int
    residual: int
    k_codes: torch.Tensor  # uint8 [B, Hkv, cap, D or D/2]
    k_scale: torch.Tensor  # fp32 [B, Hkv, cap / G, D]
    k_min: torch.Tensor  # fp32 [B, Hkv, cap / G, D]
    v_codes: torch.Tensor  # uint8 [B, Hkv, cap, D or D/2]
    v_scale: torch.Tensor  # fp32 [B, Hkv, cap]
    v_min: torch.Tensor  # fp32 [B, Hkv, cap]
    k_tail: torch.Tensor  # model dtype [B, Hkv, residual + G, D]
    v_tail: torch.Tensor  # model dtype [B, Hkv, residual + G, D]
    n_quantized: int = 0  # tokens in the quantized store (a multiple of group_size)
    n_tail: int = 0  # tokens in the full-precision tail

    def __post_init__(self) -> None:
        _check(self.bits in KV_BITS, f"KV cache bits must be one of {KV_BITS}, got {self.bits}")
        _check(
            self.group_size in KV_GROUP_SIZES,
            f"KV cache group_size must be one of {KV_GROUP_SIZES}, got {self.group_size}",
        )
        _check(self.residual >= 0, f"KV cache residual must be >= 0, got {self.residual}")
        _check(
            self.k_tail.dim() == 4, f"k_tail must be [B, H, T, D], got {tuple(self.k_tail.shape)}"
        )
        b, h, tail_cap, d = self.k_tail.shape
        _check(
            tail_cap == self.residual + self.group_size,
            f"the tail holds {tail_cap} tokens, expected residual + group_size = "
            f"{self.residual + self.group_size}",
        )
        _check(self.v_tail.shape == self.k_tail.shape, "k_tail and v_tail differ in shape")
        _check(self.v_tail.dtype == self.k_tail.dtype, "k_tail and v_tail differ in dtype")
        # Even head_dim: 4-bit codes pack channel pairs, and the kernel reads channels in pairs.
        _check(d % 2 == 0, f"KV cache head_dim must be even, got {d}")
        cap = self.k_codes.shape[2]
        dc = d if self.bits == 8 else d // 2
        _check(cap % self.group_size == 0, f"capacity {cap} is not a multiple of the group size")
        n_groups = cap // self.group_size
        expected = {
            "k_codes": ((b, h, cap, dc), torch.uint8),
            "v_codes": ((b, h, cap, dc), torch.uint8),
            "k_scale": ((b, h, n_groups, d), torch.float32),
            "k_min": ((b, h, n_groups, d), torch.float32),
            "v_scale": ((b, h, cap), torch.float32),
            "v_min": ((b, h, cap), torch.float32),
        }
        for name, (shape, dtype) in expected.items():
            t = getattr(self, name)
            _check(
                tuple(t.shape) == shape and t.dtype == dtype,
                f"{name} must be {dtype} {shape}, got {t.dtype} {tuple(t.shape)}",
            )
            _check(t.is_contiguous(), f"{name} must be contiguous")
            _check(
                t.device == self.k_tail.device, f"{name} is on {t.device}, not {self.k_tail.device}"
            )
        _check(
            self.n_quantized % self.group_size == 0 and self.n_quantized <= cap,
            f"n_quantized={self.n_quantized} is not a whole number of groups within capacity {cap}",
        )
        _check(0 <= self.n_tail < tail_cap, f"n_tail={self.n_tail} outside [0, {tail_cap})")

    @classmethod
    def empty(
        cls,
        *,
        batch: int,
        n_head_kv: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        bits: int = 8,
        group_size: int = 32,
        residual: int = 32,
        capacity: int = 0,
    ) -> QuantizedKVCache:
        """An empty cache; ``capacity`` (tokens) only preallocates, :meth:`append` grows it."""
        _check(group_size in KV_GROUP_SIZES, f"group_size must be one of {KV_GROUP_SIZES}")
        cap = -(-max(capacity, 0) // group_size) * group_size
        dc = head_dim if bits == 8 else head_dim // 2
        u8, f32 = torch.uint8, torch.float32
        shape = (batch, n_head_kv)
        return cls(
            bits=bits,
            group_size=group_size,
            residual=residual,
            k_codes=torch.zeros(*shape, cap, dc, dtype=u8, device=device),
            k_scale=torch.zeros(*shape, cap // group_size, head_dim, dtype=f32, device=device),
            k_min=torch.zeros(*shape, cap // group_size, head_dim, dtype=f32, device=device),
            v_codes=torch.zeros(*shape, cap, dc, dtype=u8, device=device),
            v_scale=torch.zeros(*shape, cap, dtype=f32, device=device),
            v_min=torch.zeros(*shape, cap, dtype=f32, device=device),
            k_tail=torch.zeros(*shape, residual + group_size, head_dim, dtype=dtype, device=device),
            v_tail=torch.zeros(*shape, residual + group_size, head_dim, dtype=dtype, device=device),
        )

    @property
    def batch(self) -> int:
        return int(self.k_tail.shape[0])

    @property
    def n_head_kv(self) -> int:
        return int(self.k_tail.shape[1])

    @property
    def head_dim(self) -> int:
        return int(self.k_tail.shape[3])

    @property
    def dtype(self) -> torch.dtype:
        return self.k_tail.dtype

    @property
    def device(self) -> torch.device:
        return self.k_tail.device

    @property
    def seq_len(self) -> int:
        return self.n_quantized + self.n_tail

    @property
    def capacity(self) -> int:
        return int(self.k_codes.shape[2])

    def nbytes_used(self) -> int:
        """Bytes that hold the current tokens (codes, scales, minimums and the tail)."""
        bh = self.batch * self.n_head_kv
        n, g = self.n_quantized, self.n_quantized // self.group_size
        codes = 2 * bh * n * self.k_codes.shape[3]
        scales = bh * (2 * g * self.head_dim + 2 * n) * 4
        tail = 2 * bh * self.n_tail * self.head_dim * self.k_tail.element_size()
        return codes + scales + tail

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Add ``T`` tokens, k and v both [B, Hkv, T, D]; quantizes whole groups as they form."""
        expected = (self.batch, self.n_head_kv, self.head_dim)
        for name, t in (("k", k), ("v", v)):
            _check(
                t.dim() == 4 and (t.shape[0], t.shape[1], t.shape[3]) == expected,
                f"{name} must be [B={expected[0]}, Hkv={expected[1]}, T, D={expected[2]}], "
                f"got {tuple(t.shape)}",
            )
        _check(k.shape[2] == v.shape[2], f"k has {k.shape[2]} tokens, v has {v.shape[2]}")
        if k.shape[2] == 0:
            return
        g = self.group_size
        k_all = torch.cat((self.k_tail[:, :, : self.n_tail], k.to(self.dtype)), dim=2)
        v_all = torch.cat((self.v_tail[:, :, : self.n_tail], v.to(self.dtype)), dim=2)
        total = k_all.shape[2]  # tail + new tokens
        n_flush = max(0, (total - self.residual) // g) * g  # whole groups that leave the tail
        if n_flush:
            self._reserve(self.n_quantized + n_flush)
            start, stop = self.n_quantized, self.n_quantized + n_flush
            kc, ks, km = quantize_key_groups(k_all[:, :, :n_flush], self.bits, g)
            vc, vs, vm = quantize_tokens(v_all[:, :, :n_flush], self.bits)
            self.k_codes[:, :, start:stop] = kc
            self.k_scale[:, :, start // g : stop // g] = ks
            self.k_min[:, :, start // g : stop // g] = km
            self.v_codes[:, :, start:stop] = vc
            self.v_scale[:, :, start:stop] = vs
            self.v_min[:, :, start:stop] = vm
            self.n_quantized = stop
        self.n_tail = total - n_flush
        self.k_tail[:, :, : self.n_tail] = k_all[:, :, n_flush:]
        self.v_tail[:, :, : self.n_tail] = v_all[:, :, n_flush:]

    def _reserve(self, n_tokens: int) -> None:
        """Grow the quantized store to hold ``n_tokens`` (doubling, in whole groups)."""
        cap = self.capacity
        if n_tokens <= cap:
            return
        g = self.group_size
        new_cap = -(-max(n_tokens, 2 * cap) // g) * g

        def grown(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
            shape = list(t.shape)
            shape[dim] = size
            out = torch.zeros(shape, dtype=t.dtype, device=t.device)
            out.narrow(dim, 0, t.shape[dim]).copy_(t)
            return out

        self.k_codes = grown(self.k_codes, 2, new_cap)
        self.v_codes = grown(self.v_codes, 2, new_cap)
        self.k_scale = grown(self.k_scale, 2, new_cap // g)
        self.k_min = grown(self.k_min, 2, new_cap // g)
        self.v_scale = grown(self.v_scale, 2, new_cap)
        self.v_min = grown(self.v_min, 2, new_cap)
