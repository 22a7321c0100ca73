"""Keeping the GUI conversation's cached prefix while API requests use the same llama.cpp context.

Choice (issue 10: "separate sequence slots or a second context, and say which"): neither a second
context nor a second sequence, but **save and restore of sequence 0's KV around API requests**.

- A second `llama_context` on the same `llama_model` shares the weights, but it allocates a second
  KV cache and a second compute buffer (for SmolLM2 at n_ctx 2048: 45 + ~99 MiB; for a 7B model at
  8k context, 1 GiB of KV plus compute), on the GPU when the plan offloads. The planner sized the
  VRAM budget for one context, so a second one would break the plan it showed the person.
- Sequence slots in one context split its n_ctx between the GUI and the API and need llama.cpp's
  unified-KV bookkeeping that `llama_cpp.Llama.generate` (sequence 0 only) does not do.
- Saving sequence 0 (`llama_state_seq_get_data`) copies only the cells the conversation uses, into
  host memory, and only when the conversation changed since the last copy; restoring it after an
  API request is one copy back. Measured on SmolLM2 Q4_1 (f16 KV, 22.5 KiB per token) with a
  997-token conversation on the 2-core build machine (heavily loaded at the time): save 17-46 ms,
  restore 13-38 ms (median 17 ms), against seconds to re-evaluate the conversation on a CPU.
  `python -m app.runtime.server.bench` prints the figures for this machine.

Runs on the engine thread only (the dispatcher's ENGINE mode), like everything that touches a context.
"""

from __future__ import annotations

import ctypes
import logging
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    tokens: np.ndarray  # the held token ids, in position order
    data: Any  # ctypes uint8 array: sequence 0's KV cells as llama.cpp serialized them
    size: int
    seconds: float  # what taking it cost


# Per Llama object (dropped with it when the model is closed): the conversation's kept copy, and
# the tokens the last API request left in the context when there was no conversation to restore.
_kept: weakref.WeakKeyDictionary[Any, Snapshot] = weakref.WeakKeyDictionary()
_left_by_api: weakref.WeakKeyDictionary[Any, np.ndarray] = weakref.WeakKeyDictionary()


def save(llm: Any) -> Snapshot | None:
    """Sequence 0's KV and tokens, or None when the context holds nothing."""
    import llama_cpp

    n = int(llm.n_tokens)
    if n == 0:
        return None
    started = time.perf_counter()
    ctx = llm._ctx.ctx
    size = int(llama_cpp.llama_state_seq_get_size(ctx, 0))
    data = (ctypes.c_uint8 * size)()
    written = int(llama_cpp.llama_state_seq_get_data(ctx, data, size, 0))
    if written == 0:
        log.warning("llama.cpp could not serialize the conversation's KV; the next GUI turn re-evaluates it")
        return None
    return Snapshot(llm.input_ids[:n].copy(), data, written, time.perf_counter() - started)


def restore(llm: Any, snapshot: Snapshot) -> float:
    """Put the snapshot back in place of whatever the context holds now; returns the seconds it took."""
    import llama_cpp

    started = time.perf_counter()
    ctx = llm._ctx.ctx
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    if int(llama_cpp.llama_state_seq_set_data(ctx, snapshot.data, snapshot.size, 0)) == 0:
        llm.n_tokens = 0  # an empty cache is correct, only slower: the next turn re-evaluates
        log.warning("llama.cpp refused the saved conversation KV; the next GUI turn re-evaluates it")
        return time.perf_counter() - started
    n = len(snapshot.tokens)
    llm.input_ids[:n] = snapshot.tokens
    llm.n_tokens = n
    llm._requires_eval = True  # the logits in the context are the API request's, not the conversation's
    return time.perf_counter() - started


@contextmanager
def conversation_kept(llm: Any) -> Iterator[dict[str, float]]:
    """Run an API request on ``llm`` and leave its context as the conversation had it.

    When the context holds no conversation (nothing, or what the previous API request left), the
    API request's own tokens stay afterwards, so the next request with the same prefix (a system
    prompt, a growing chat) evaluates only its new tokens. Yields a dict that ends up holding the
    save and restore times (seconds) for the request log.
    """
    costs = {"save_seconds": 0.0, "restore_seconds": 0.0}
    n = int(llm.n_tokens)
    held = llm.input_ids[:n]
    snapshot = _kept.get(llm)
    if n == 0 or _same(_left_by_api.get(llm), held):
        snapshot = None  # nothing of a conversation's to keep
    elif snapshot is None or not _same(snapshot.tokens, held):
        snapshot = save(llm)  # the conversation moved on since the last copy (or there was none)
        if snapshot is not None:
            costs["save_seconds"] = snapshot.seconds
    if snapshot is None:
        _kept.pop(llm, None)
    else:
        _kept[llm] = snapshot
    try:
        yield costs
    finally:
        if snapshot is not None:
            costs["restore_seconds"] = restore(llm, snapshot)
            _left_by_api.pop(llm, None)
        else:
            _left_by_api[llm] = llm.input_ids[: int(llm.n_tokens)].copy()


def _same(tokens: np.ndarray | None, held: np.ndarray) -> bool:
    return tokens is not None and len(tokens) == len(held) and bool(np.array_equal(tokens, held))
