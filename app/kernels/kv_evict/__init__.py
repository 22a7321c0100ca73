"""KV-eviction support: in-place compaction of kept positions and the KeyDiff score."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import dispatch


def compact_(tensors: Sequence[torch.Tensor], keep: torch.Tensor) -> int:
    """Gather positions ``keep`` [B, H, n] of each [B, H, T, D] tensor to the front, in place.

    Positions must be distinct within a head (any order; kept tokens keep their original order).
    Returns ``n``, the cache's new length.
    """
    return dispatch.resolve("kv_compact", keep.device)(tensors, keep)


def keydiff_scores(
    keys: torch.Tensor, mask: torch.Tensor | None = None, *, normalized_anchor: bool = True
) -> torch.Tensor:
    """KeyDiff scores [B, H, T] fp32 for keys [B, H, T, D]: cosine distance to the anchor key.

    Higher means more distinctive: keep the top ``budget``. ``mask`` [B, T] (True = real token)
    excludes padding from the anchor and scores it ``-inf``.
    """
    return dispatch.resolve("keydiff_scores", keys.device)(
        keys, mask, normalized_anchor=normalized_anchor
    )


__all__ = ["compact_", "keydiff_scores"]
