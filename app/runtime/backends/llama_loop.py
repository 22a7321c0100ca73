"""The one llama.cpp token loop: the studio's chat and the HTTP API both generate through `run`.

One step: sample the next token from the last decode's logits (through a llama.cpp sampler chain:
repeat penalty, grammar, top-k/typical/top-p/min-p, temperature, seeded draw, as llama-cpp-python
builds it), show its text (stop strings held back and never shown), check cancel and the budget,
then decode it to get the next logits. Two hooks change a step (see `hooks`):

- a **logits mask** edits the logits in place before the chain samples them;
- a **drafter** proposes k tokens; the pending token and the k drafts are decoded in ONE batch with
  logits at every position, the chain samples at each position in turn and the drafts are accepted
  while they equal what it drew; the first disagreement is itself the next token, and the KV of
  the rejected drafts is removed (`llama_memory_seq_rm`). Every output token is drawn by the same
  chain, in the same order, from the same logits as plain decoding (batched and one-at-a-time
  logits are bitwise equal on the CPU build), so the output is identical to plain decoding for
  greedy and seeded sampling alike. Speculation is off while a mask or a grammar is active. The
  stats so far go to ``on_speculation`` after verify steps, a few times a second at most
  (`hooks.SpeculationReporter`), for the studio's live acceptance rate.

Invariant kept with `KvSequence`: the context holds the prompt and every reply token but the last
one drawn (which is decoded only when the next one is wanted), exactly as plain decoding leaves it,
so the next turn's prefix reuse counts the same tokens with or without speculation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.runtime.backends.base import IsCancelled, TokenSink
from app.runtime.backends.context import common_prefix
from app.runtime.backends.hooks import Drafter, LogitsMask, Speculation, SpeculationReporter, SpeculationSink, apply_constraint
from app.runtime.backends.llama_kv import KvSequence
from app.runtime.backends.streaming import ByteStopText
from app.runtime.protocol import ErrorKind, RuntimeFailure, Sampling

PREFILL_CHUNK = 256  # tokens per prompt-processing step; about a second at the slowest CPU speeds
MakeRoom = Callable[[], bool]  # the context is full: free some of it (True), or end the reply (False)


class Sampler:
    """A llama.cpp sampler chain for one reply, built as `Llama._init_sampler` builds it (same order,
    same arguments), so a seed gives the same text as llama-cpp-python's own `generate` did."""

    def __init__(self, kv: KvSequence, sampling: Sampling, *, grammar: str | None = None, last_n: int = 64) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._kv = kv
        self.chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        try:
            add = lambda sampler: llama_cpp.llama_sampler_chain_add(self.chain, sampler)  # noqa: E731
            # The binding's first argument is n_vocab, as llama-cpp-python's LlamaSampler passes it.
            add(llama_cpp.llama_sampler_init_penalties(kv.n_vocab, last_n, sampling.repeat_penalty, 0.0, 0.0))
            if grammar is not None:
                add(self._grammar(grammar))
            seed = sampling.seed if sampling.seed is not None else int(time.time_ns() & 0x7FFFFFFF)
            temp = sampling.temperature
            if temp < 0.0:
                add(llama_cpp.llama_sampler_init_dist(seed))
            elif temp == 0.0:
                add(llama_cpp.llama_sampler_init_greedy())
            else:
                add(llama_cpp.llama_sampler_init_top_k(sampling.top_k))
                add(llama_cpp.llama_sampler_init_typical(1.0, 1))
                add(llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
                add(llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
                add(llama_cpp.llama_sampler_init_temp(temp))
                add(llama_cpp.llama_sampler_init_dist(seed))
        except BaseException:
            self.close()
            raise
        self.constrained = grammar is not None

    def _grammar(self, grammar: str) -> Any:
        """The grammar sampler, checked: llama.cpp answers NULL for a grammar it cannot parse, and a
        NULL in the chain would crash the process at the first token."""
        sampler = self._lib.llama_sampler_init_grammar(self._kv.vocab, grammar.encode("utf-8"), b"root")
        if not sampler:
            raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "This response_format gives a grammar llama.cpp cannot parse (an empty anyOf, say); simplify the JSON schema.")
        return sampler

    def sample(self, i: int) -> int:
        """Draw from the logits of the last decode's token ``i``; the chain remembers the draw (penalties, grammar)."""
        return int(self._lib.llama_sampler_sample(self.chain, self._kv.ctx, i))

    def close(self) -> None:
        chain, self.chain = self.chain, None
        if chain is not None:
            self._lib.llama_sampler_free(chain)

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Generated:
    """What one run of the loop produced."""

    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    completion_tokens: int
    cached_tokens: int  # prompt tokens whose KV was reused
    prompt_seconds: float  # up to the first token
    decode_seconds: float  # from the first token to the last
    speculation: Speculation | None  # None when no drafter was given


def run(
    kv: KvSequence,
    prompt: list[int],
    sampler: Sampler,
    *,
    max_tokens: int,
    stop: Sequence[str],
    on_token: TokenSink,
    is_cancelled: IsCancelled,
    mask: LogitsMask | None = None,
    drafter: Drafter | None = None,
    make_room: MakeRoom | None = None,
    on_speculation: SpeculationSink | None = None,
) -> Generated:
    """Generate up to ``max_tokens`` after ``prompt``, reusing the longest prefix the context holds;
    ``on_speculation`` gets the drafter's stats so far while the reply streams (throttled)."""
    if not prompt:
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "The prompt is empty.")
    started = time.perf_counter()
    spec = _speculation(kv, drafter, mask, sampler)
    reporter = SpeculationReporter(on_speculation)
    cached = kv.cut(min(common_prefix(kv.held(), prompt), len(prompt) - 1))  # at least one token is decoded: fresh logits
    last = _prefill(kv, prompt, cached, is_cancelled)
    if last is None:
        return Generated("", "cancelled", 0, cached, time.perf_counter() - started, 0.0, spec)
    text = ByteStopText(stop)
    history = list(prompt)  # every token so far, the drafter's view; its last one is the pending token
    generated: list[int] = []
    finish, first_at = "length", None
    index, base = last, 0  # the logits row to sample; the KV length before the pending token
    while True:
        drafts: list[int] = []
        if generated:  # decode the pending token (the last one shown), and any drafts, for the next logits
            if kv.n >= kv.n_ctx:  # no room to evaluate the pending token
                if make_room is None or not make_room():
                    break  # the reply ends with "length"
                history = [*kv.held(), generated[-1]]  # the cache was shifted: what the context holds now
            base = kv.n
            drafts = _draft(kv, drafter, spec, history, room=min(max_tokens - len(generated) - 1, kv.n_ctx - base - 1))
            kv.decode([generated[-1], *drafts], all_logits=bool(drafts))
            index = 0
        drawn = _verify(kv, sampler, mask, generated, index, drafts)
        if drafts and spec is not None and drafter is not None:
            spec.steps, spec.drafted, spec.accepted = spec.steps + 1, spec.drafted + len(drafts), spec.accepted + len(drawn) - 1
            drafter.observe(len(drafts), len(drawn) - 1)
        if not drawn:
            finish = "stop"  # the mask allows nothing more: the reply is complete
            break
        shown = 0
        for token in drawn:
            if first_at is None:
                first_at = time.perf_counter()
            shown += 1
            finish = _emit(kv, token, text, on_token, is_cancelled, generated)
            if finish != "length" or len(generated) >= max_tokens:
                break
        if drafts:
            kv.cut(base + shown)  # the pending token and the drafts up to the last one shown stay
            reporter.step(spec, tokens=len(generated))
        if shown < len(drawn) or finish != "length" or len(generated) >= max_tokens:
            break
        history += drawn
    tail = text.flush(finish == "stop")
    if tail:
        on_token(tail)
    ended = time.perf_counter()
    first = first_at if first_at is not None else ended
    return Generated(text.text, finish, len(generated), cached, first - started, ended - first, spec)


def _prefill(kv: KvSequence, prompt: list[int], cached: int, is_cancelled: IsCancelled) -> int | None:
    """Decode the prompt's new tokens in chunks, checking cancel between them; the logits row of its
    last token, or None when cancelled.

    llama.cpp cannot be interrupted inside a decode call (an abort callback in Python would run
    hundreds of times per token), so a long prompt is cut into pieces instead.
    """
    chunk = min(PREFILL_CHUNK, kv.n_batch)
    piece: list[int] = []
    for start in range(cached, len(prompt), chunk):
        if is_cancelled():
            return None
        piece = prompt[start : start + chunk]
        kv.decode(piece)
    return len(piece) - 1


def _speculation(kv: KvSequence, drafter: Drafter | None, mask: LogitsMask | None, sampler: Sampler) -> Speculation | None:
    if drafter is None:
        return None
    if mask is not None or sampler.constrained:
        return Speculation(off="a logits mask or grammar constrains the reply")
    if not kv.can_rewind:
        return Speculation(off="this model's memory cannot forget rejected drafts")
    begin = getattr(drafter, "begin", None)
    if begin is None:
        return Speculation()
    decided = dict(begin(kv))  # measures the verify-cost curve at first use; the held KV is left as it was
    return Speculation(off=None if decided.get("on", True) else str(decided.get("reason") or "not worth it here"), plan=decided)


def _draft(kv: KvSequence, drafter: Drafter | None, spec: Speculation | None, history: list[int], *, room: int) -> list[int]:
    """The drafter's guess, cut to what fits one batch, the context and the reply's budget."""
    limit = min(room, kv.n_batch - 1)
    if drafter is None or spec is None or spec.off or limit <= 0:
        return []
    drafts: list[int] = []
    for token in list(drafter.propose(history, limit))[:limit]:
        if not 0 <= int(token) < kv.n_vocab:
            break  # a drafter's bad id ends its guess; it never reaches llama_decode
        drafts.append(int(token))
    return drafts


def _verify(kv: KvSequence, sampler: Sampler, mask: LogitsMask | None, generated: list[int], index: int, drafts: list[int]) -> list[int]:
    """The tokens drawn this step: one without drafts; with drafts, the accepted ones and then the
    target's own token at the first disagreement (or after the last draft). [] when the mask allows nothing."""
    drawn: list[int] = []
    for i in range(len(drafts) + 1):
        if mask is not None:  # never with drafts (see _speculation)
            logits = kv.logits(index + i)
            if not apply_constraint(logits, mask(generated, logits)):
                return drawn  # nothing may follow: the reply is complete
        token = sampler.sample(index + i)
        drawn.append(token)
        if i == len(drafts) or token != drafts[i]:
            break
    return drawn


def _emit(kv: KvSequence, token: int, text: ByteStopText, on_token: TokenSink, is_cancelled: IsCancelled, generated: list[int]) -> str:
    """Show one drawn token; the finish reason when the reply ends at it, else "length" (going on)."""
    if kv.is_eog(token):
        return "stop"  # the end-of-generation token is neither counted nor shown
    generated.append(token)
    piece, stopped = text.feed(kv.piece(token))
    if piece:
        on_token(piece)
    if stopped:
        return "stop"
    if is_cancelled():
        return "cancelled"
    return "length"
