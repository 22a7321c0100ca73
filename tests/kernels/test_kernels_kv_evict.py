"""KV eviction: in-place compaction (exact) and the KeyDiff score against the reference.

T = 77 is not a multiple of the token block (32) and head_dim 40 is not a power of two.
"""

from __future__ import annotations

import pytest
import torch

from app.kernels.kv_evict import compact_, keydiff_scores
from app.kernels.kv_evict import reference as ev_reference
from app.kernels.kv_evict import triton as ev_triton

B, H, T, D = 2, 3, 77, 40


def _keep(n_keep: int, t: int = T) -> torch.Tensor:
    """Distinct positions per head, in random order (the functions sort them)."""
    return torch.stack(
        [torch.stack([torch.randperm(t)[:n_keep] for _ in range(H)]) for _ in range(B)]
    )


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16, torch.uint8], ids=str
)
@pytest.mark.parametrize("n_keep", [0, 1, 45, T])
def test_compact_matches_reference_exactly_and_in_place(dtype: torch.dtype, n_keep: int) -> None:
    k = (torch.randn(B, H, T, D) * 40).to(dtype)
    v = torch.randn(B, H, T, 24).to(dtype)  # another head_dim in the same call
    keep = _keep(n_keep)
    want_k, want_v = k.clone(), v.clone()
    assert ev_reference.compact_([want_k, want_v], keep) == n_keep
    ptr = k.data_ptr()
    assert ev_triton.compact_([k, v], keep.to(torch.int32)) == n_keep
    assert k.data_ptr() == ptr
    assert torch.equal(k, want_k) and torch.equal(v, want_v)


def test_compact_keeps_order_and_content() -> None:
    k = torch.arange(T, dtype=torch.float32).view(1, 1, T, 1).expand(B, H, T, 2).contiguous()
    keep = _keep(30)
    n = ev_triton.compact_([k], keep)
    assert torch.equal(k[:, :, :n, 0], keep.sort(dim=-1).values.float())


def test_compact_on_a_strided_view() -> None:
    # A cache that is a slice of a larger buffer (last dim contiguous, other strides not).
    buf = torch.randn(B, H, T + 10, D + 8)
    view = buf[:, :, :T, :D]
    want = buf.clone()
    keep = _keep(50)
    ev_reference.compact_([want[:, :, :T, :D]], keep)
    ev_triton.compact_([view], keep)
    assert torch.equal(buf, want)


def test_compact_checks_its_arguments() -> None:
    k = torch.randn(B, H, T, D)
    with pytest.raises(ValueError, match="keep must be"):
        compact_([k], _keep(10)[:, :2])
    with pytest.raises(ValueError, match="int32 or int64"):
        compact_([k], _keep(10).float())


def _keydiff_in(keys: torch.Tensor, mask: torch.Tensor | None, normalized: bool) -> torch.Tensor:
    """Torch's ordinary computation of the same score in keys' own dtype."""
    valid = torch.ones(keys.shape[0], keys.shape[2], dtype=torch.bool) if mask is None else mask
    w = valid[:, None, :, None].to(keys.dtype)
    eps = torch.finfo(keys.dtype).tiny  # 1e-12 would underflow to 0 in fp16
    unit = torch.nn.functional.normalize(keys, dim=-1, eps=eps) if normalized else keys
    anchor = (unit * w).sum(2) / w.sum(2).clamp_min(1)  # [B, H, D]
    cos = torch.nn.functional.cosine_similarity(keys, anchor[:, :, None], dim=-1)
    return (1 - cos).masked_fill(~valid[:, None], float("-inf"))


@pytest.mark.parametrize("normalized", [True, False], ids=["unit-anchor", "mean-anchor"])
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_keydiff_matches_reference(check_error, dtype, masked: bool, normalized: bool) -> None:
    keys = (torch.randn(B, H, T, D) + 0.3).to(dtype)
    keys[0, 1, 5] = 0.0  # a zero key scores distance 1
    mask = None
    if masked:
        mask = torch.ones(B, T, dtype=torch.bool)
        mask[1, :11] = False  # left padding
    out = ev_triton.keydiff_scores(keys, mask, normalized_anchor=normalized)
    truth = ev_reference.keydiff_scores(keys.double(), mask, normalized_anchor=normalized)
    own = _keydiff_in(keys, mask, normalized)
    assert out.dtype == torch.float32 and out.shape == (B, H, T)
    finite = torch.isfinite(truth)  # -inf exactly at the masked positions
    assert torch.equal(torch.isfinite(out), finite)
    compared = finite.clone()
    compared[0, 1, 5] = False  # torch's fp16 cosine of a zero key is 0/0: leave it out
    check_error(out[compared], own[compared], truth[compared])
    assert float(out[0, 1, 5]) == 1.0 == float(truth[0, 1, 5])


def test_keydiff_ranks_the_odd_key_first() -> None:
    keys = torch.ones(1, 1, 9, 4) + 0.01 * torch.randn(1, 1, 9, 4)
    keys[0, 0, 6] = torch.tensor([1.0, -1.0, 1.0, -1.0])
    assert int(keydiff_scores(keys).argmax()) == 6
    assert int(ev_triton.keydiff_scores(keys).argmax()) == 6
