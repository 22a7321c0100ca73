"""Sequence 0 of a llama.cpp context as Hearth drives it: decode, cut, shift, save and restore.

Hearth decodes with its own `llama_batch` (logits at the positions it asks for: the last prompt
token, or every drafted token when speculating) instead of `Llama.eval`/`Llama.generate`, and
keeps the `Llama` object's public ``input_ids``/``n_tokens`` in step with the KV cache, so the
held tokens can always be read from there. Only public llama-cpp-python API is used: the
`Llama.ctx`/`Llama.model` properties and the low-level `llama_cpp` functions.

Invariant: ``input_ids[:n_tokens]`` are exactly the tokens whose KV the context holds, in position
order. Whoever samples decodes first: logits are never read after a cut, shift or restore.
Runs on the engine thread only, like everything that touches a context.
"""

from __future__ import annotations

import ctypes
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.runtime.protocol import ErrorKind, RuntimeFailure

log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    tokens: np.ndarray  # the held token ids, in position order
    data: Any  # ctypes uint8 array: sequence 0's KV cells as llama.cpp serialized them
    size: int
    seconds: float  # what taking it cost


class KvSequence:
    """The context's one sequence: its tokens, decoding with logits where asked, and moving its KV."""

    def __init__(self, llm: Any) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.llm = llm
        self.ctx = llm.ctx
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.n_ctx = int(llama_cpp.llama_n_ctx(self.ctx))
        self.n_batch = int(llama_cpp.llama_n_batch(self.ctx))
        # A recurrent or hybrid memory cannot forget a tail: no cut back to a prefix, no speculation.
        self.can_rewind = not (llama_cpp.llama_model_is_recurrent(llm.model) or llama_cpp.llama_model_is_hybrid(llm.model))
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)

    # ---- tokens -------------------------------------------------------------------------------

    @property
    def n(self) -> int:
        return int(self.llm.n_tokens)

    def held(self) -> list[int]:
        """The tokens whose KV the context holds, in position order."""
        return self.llm.input_ids[: self.n].tolist()

    def is_eog(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self.vocab, token))

    def piece(self, token: int) -> bytes:
        return bytes(self.llm.detokenize([token]))

    # ---- decoding -----------------------------------------------------------------------------

    def cut(self, n: int) -> int:
        """Forget every position from ``n`` on; returns how many stay (0 when this memory cannot
        forget only a tail: then it is cleared and everything is evaluated again)."""
        n = max(0, min(n, self.n))
        if not self._lib.llama_memory_seq_rm(self.memory, 0, n, -1):
            self._lib.llama_memory_clear(self.memory, True)
            n = 0
        self.llm.n_tokens = n
        return n

    def decode(self, tokens: list[int], *, all_logits: bool = False) -> None:
        """Append ``tokens`` (at most n_batch) at the next positions in one `llama_decode`.

        Logits are computed for the last token, or for every token with ``all_logits`` (a verify
        batch); read them with `logits(i)`, ``i`` being the token's index in ``tokens``.
        """
        lib, batch, n = self._lib, self._batch, self.n
        count = len(tokens)
        if not 0 < count <= self.n_batch or n + count > self.n_ctx:
            raise RuntimeFailure(ErrorKind.INTERNAL, f"decode of {count} tokens at {n} does not fit (batch {self.n_batch}, context {self.n_ctx})")
        batch.n_tokens = count
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = n + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = all_logits or i == count - 1
        code = int(lib.llama_decode(self.ctx, batch))
        if code != 0:
            # The KV past n may hold part of the batch: forget it so that tokens and cache agree.
            lib.llama_memory_seq_rm(self.memory, 0, n, -1)
            raise RuntimeFailure(ErrorKind.INTERNAL, f"llama.cpp could not evaluate {count} tokens at position {n} (llama_decode returned {code}).")
        self.llm.input_ids[n : n + count] = tokens
        self.llm.n_tokens = n + count

    def logits(self, i: int) -> np.ndarray:
        """The logits the last decode computed for its token ``i``: a writable view into llama.cpp's
        buffer, which `llama_sampler_sample` reads, so a mask applied here takes effect."""
        pointer = self._lib.llama_get_logits_ith(self.ctx, i)
        if not pointer:
            raise RuntimeFailure(ErrorKind.INTERNAL, f"llama.cpp has no logits for batch index {i}")
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    # ---- moving the cache ---------------------------------------------------------------------

    def shift(self, keep: int, drop: int) -> bool:
        """Forget positions [keep, keep + drop) and move the later ones left by ``drop``.

        llama.cpp re-rotates the moved keys (RoPE shift) at the next decode. False when this cache
        type cannot shift (then nothing was changed).
        """
        lib, total = self._lib, self.n
        if not self.memory or not lib.llama_memory_can_shift(self.memory):
            return False
        if not lib.llama_memory_seq_rm(self.memory, 0, keep, keep + drop):
            return False
        lib.llama_memory_seq_add(self.memory, 0, keep + drop, -1, -drop)
        ids = self.llm.input_ids
        ids[keep : total - drop] = ids[keep + drop : total].copy()
        self.llm.n_tokens = total - drop
        return True

    def save(self) -> Snapshot | None:
        """Sequence 0's KV and tokens (only the cells it uses, into host memory); None when empty."""
        lib, n = self._lib, self.n
        if n == 0:
            return None
        started = time.perf_counter()
        size = int(lib.llama_state_seq_get_size(self.ctx, 0))
        data = (ctypes.c_uint8 * size)()
        written = int(lib.llama_state_seq_get_data(self.ctx, data, size, 0))
        if written == 0:
            log.warning("llama.cpp could not serialize the conversation's KV; the next turn re-evaluates it")
            return None
        return Snapshot(self.llm.input_ids[:n].copy(), data, written, time.perf_counter() - started)

    def restore(self, snapshot: Snapshot) -> float:
        """Put the snapshot back in place of whatever the context holds now; returns the seconds it took."""
        lib = self._lib
        started = time.perf_counter()
        lib.llama_memory_clear(self.memory, True)
        if int(lib.llama_state_seq_set_data(self.ctx, snapshot.data, snapshot.size, 0)) == 0:
            self.llm.n_tokens = 0  # an empty cache is correct, only slower: the next turn re-evaluates
            log.warning("llama.cpp refused the saved conversation KV; the next turn re-evaluates it")
            return time.perf_counter() - started
        n = len(snapshot.tokens)
        self.llm.input_ids[:n] = snapshot.tokens
        self.llm.n_tokens = n
        return time.perf_counter() - started

    def close(self) -> None:
        batch, self._batch = self._batch, None
        if batch is not None:
            self._lib.llama_batch_free(batch)
