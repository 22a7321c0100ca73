"""Keeping the studio conversation's cached prefix while API requests use the same llama.cpp context.

Choice (issue 10: "separate sequence slots or a second context, and say which"): neither a second
context nor a second sequence, but **save and restore of sequence 0's KV around API requests**.

- A second `llama_context` on the same `llama_model` shares the weights, but it allocates a second
  KV cache and a second compute buffer (for SmolLM2 at n_ctx 2048: 45 + ~99 MiB; for a 7B model at
  8k context, 1 GiB of KV plus compute), on the GPU when the plan offloads. The planner sized the
  VRAM budget for one context, so a second one would break the plan it showed the person.
- Sequence slots in one context split its n_ctx between the GUI and the API and need unified-KV
  bookkeeping for every sequence.
- Saving sequence 0 (`llama_state_seq_get_data`) copies only the cells the conversation uses, into
  host memory, and only when the conversation changed since the last copy; restoring it after an
  API request is one copy back. Measured on SmolLM2 Q4_1 (f16 KV, 22.5 KiB per token) with a
  997-token conversation on the 2-core build machine (heavily loaded at the time): save 17-46 ms,
  restore 13-38 ms (median 17 ms), against seconds to re-evaluate the conversation on a CPU.
  `hearth bench` prints the figures for this machine (`server_stream`).

The backend owns one `ConversationKeeper`; `LlamaCppBackend.complete` runs every API request
inside `kept()`. Engine thread only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from app.runtime.backends.llama_kv import KvSequence, Snapshot


class ConversationKeeper:
    """The conversation's kept copy, and the tokens the last API request left when there was none."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._left_by_api: np.ndarray | None = None

    @contextmanager
    def kept(self, kv: KvSequence) -> Iterator[dict[str, float]]:
        """Run an API request on ``kv`` and leave the context as the conversation had it.

        When the context holds no conversation (nothing, or what the previous API request left),
        the API request's own tokens stay afterwards, so the next request with the same prefix (a
        system prompt, a growing chat) evaluates only its new tokens. Yields a dict that ends up
        holding the save and restore times (seconds) for the request log.
        """
        costs = {"save_seconds": 0.0, "restore_seconds": 0.0}
        held = kv.llm.input_ids[: kv.n]
        snapshot = self._snapshot
        if kv.n == 0 or _same(self._left_by_api, held):
            snapshot = None  # nothing of a conversation's to keep
        elif snapshot is None or not _same(snapshot.tokens, held):
            snapshot = kv.save()  # the conversation moved on since the last copy (or there was none)
            if snapshot is not None:
                costs["save_seconds"] = snapshot.seconds
        self._snapshot = snapshot
        try:
            yield costs
        finally:
            if snapshot is not None:
                costs["restore_seconds"] = kv.restore(snapshot)
                self._left_by_api = None
            else:
                self._left_by_api = kv.llm.input_ids[: kv.n].copy()


def _same(tokens: np.ndarray | None, held: np.ndarray) -> bool:
    return tokens is not None and len(tokens) == len(held) and bool(np.array_equal(tokens, held))
