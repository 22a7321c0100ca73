"""The truth for KV-eviction support: in-place compaction and the KeyDiff score.

* ``compact_``: after a policy picks the positions to keep in each head, gather them to the front
  of the cache, in place, keeping their order. Every head keeps the same number of positions, so
  the cache stays one rectangular tensor with one new length.
* ``keydiff_scores``: KeyDiff (Park et al., arXiv:2504.15364) keeps the keys least similar to the
  head's *anchor*, the mean of its unit-normalised keys. The score is the cosine distance
  ``1 - cos(k_t, anchor)`` (higher = more distinctive = keep), so a policy keeps the top-``budget``
  scores. ``normalized_anchor=False`` uses the plain mean key instead. Positions outside ``mask``
  neither count towards the anchor nor get a score: they score ``-inf`` so they are evicted first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

COS_EPS = 1e-12  # cos = k·a / max(|k| |a|, COS_EPS): a zero key (or anchor) scores distance 1


def check_compact_args(tensors: Sequence[torch.Tensor], keep: torch.Tensor) -> None:
    if not tensors:
        raise ValueError("compact_ needs at least one cache tensor")
    b, h, t = tensors[0].shape[:3]
    for x in tensors:
        if x.dim() != 4 or tuple(x.shape[:3]) != (b, h, t):
            raise ValueError(
                f"cache tensors must all be [B={b}, H={h}, T={t}, D], got {tuple(x.shape)}"
            )
        if x.device != keep.device:
            raise ValueError(f"cache tensor on {x.device}, keep indices on {keep.device}")
    if keep.dim() != 3 or tuple(keep.shape[:2]) != (b, h) or keep.shape[2] > t:
        raise ValueError(f"keep must be [B={b}, H={h}, n_keep <= {t}], got {tuple(keep.shape)}")
    if keep.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"keep must hold int32 or int64 positions, got {keep.dtype}")


def compact_(tensors: Sequence[torch.Tensor], keep: torch.Tensor) -> int:
    """Move positions ``keep[b, h, :]`` of each [B, H, T, D] tensor to ``[:, :, :n_keep]`` in place.

    ``keep`` holds distinct positions per head, in any order (they are sorted here, so the kept
    tokens stay in their original order). Returns ``n_keep``, the new length; positions past it
    are left as they were and should be treated as free.
    """
    check_compact_args(tensors, keep)
    idx = keep.sort(dim=-1).values.long()  # [B, H, n]
    n = idx.shape[2]
    for x in tensors:
        gathered = torch.gather(x, 2, idx[..., None].expand(-1, -1, -1, x.shape[3]))  # a copy
        x[:, :, :n].copy_(gathered)
    return n


def check_keydiff_inputs(keys: torch.Tensor, mask: torch.Tensor | None) -> tuple[int, int, int, int]:
    """The shapes every KeyDiff path accepts; returns (B, H, T, D)."""
    if keys.dim() != 4:
        raise ValueError(f"keys must be [B, H, T, D], got {tuple(keys.shape)}")
    b, h, t, d = keys.shape
    if mask is not None and tuple(mask.shape) != (b, t):
        raise ValueError(f"mask must be [B={b}, T={t}], got {tuple(mask.shape)}")
    return b, h, t, d


def keydiff_scores(
    keys: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    normalized_anchor: bool = True,
) -> torch.Tensor:
    """KeyDiff scores for keys [B, H, T, D] -> [B, H, T] fp32; ``mask`` [B, T] marks real tokens."""
    b, _, t, _ = check_keydiff_inputs(keys, mask)
    ct = torch.promote_types(keys.dtype, torch.float32)
    k = keys.to(ct)
    valid = (
        torch.ones(b, 1, t, 1, dtype=ct, device=k.device)
        if mask is None
        else mask.to(ct)[:, None, :, None]
    )  # [B, 1, T, 1]
    norms = torch.linalg.vector_norm(k, dim=-1, keepdim=True)  # [B, H, T, 1]
    contrib = k / norms.clamp_min(COS_EPS) if normalized_anchor else k
    anchor = (contrib * valid).sum(dim=2) / valid.sum(dim=2).clamp_min(1.0)  # [B, H, D]
    anchor_norm = torch.linalg.vector_norm(anchor, dim=-1)  # [B, H]
    dots = torch.einsum("bhtd,bhd->bht", k, anchor)
    cos = dots / (norms[..., 0] * anchor_norm[..., None]).clamp_min(COS_EPS)
    score = (1.0 - cos).masked_fill(valid[..., 0] == 0, float("-inf"))
    return score  # fp32 (fp64 for fp64 keys)
