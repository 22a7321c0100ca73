"""Keeping a long conversation inside a fixed context: which messages stay, and moving the KV cache.

A conversation is the leading system message(s) and then turns, each a user message with the
replies after it. When the rendered conversation plus room for the reply does not fit in n_ctx,
a policy picks one gap of whole turns to forget (`Window`): the oldest turns after the system
prompt ("rolling_window"), the turns after the first one ("truncate_middle"), or none at all
("stop_at_limit", which refuses instead). Everything here works on token lists and a `render`
function (messages -> tokens), so it is independent of any backend.

How the context is shared out before a reply starts is a `ContextBudget`: the conversation, the
tool schemas, the documents and the reply each get a number of tokens, from the plan's n_ctx.

The KV cache then follows the window in place: for ChatML-like templates every turn renders on
its own, so the tokens of the kept messages are exactly the cached tokens with the forgotten
turns' span cut out. `plan_reuse` finds that span by comparing tokens (never by assuming the
template's shape), and the backend removes it and RoPE-shifts the rest (StreamingLLM-style,
`llama_kv.KvSequence.shift`), so only the new turn is evaluated. When the tokens say otherwise,
the caller re-evaluates instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from app.runtime.protocol import ErrorKind, RuntimeFailure

ROLLING_WINDOW, TRUNCATE_MIDDLE, STOP_AT_LIMIT = "rolling_window", "truncate_middle", "stop_at_limit"
POLICIES = (ROLLING_WINDOW, TRUNCATE_MIDDLE, STOP_AT_LIMIT)
SHIFTING_POLICIES = (ROLLING_WINDOW, TRUNCATE_MIDDLE)  # may forget turns while a reply is generated

Message = dict[str, str]
Render = Callable[[Sequence[Message]], list[int]]  # messages -> prompt tokens (with generation prompt)

# Two user messages that differ in their first token: where their renderings stop agreeing with a
# prompt is where that prompt's next turn's content starts (after the template's "user" header).
_PROBES = ({"role": "user", "content": "0"}, {"role": "user", "content": "1"})


def reserve_for(max_tokens: int, n_ctx: int) -> int:
    """Tokens kept free for the reply before it starts.

    Capped at half the context: a max_tokens as large as the context (the default 512 on a 512
    context) would otherwise leave no room for any conversation; a longer reply is handled by
    shifting during generation, or ends with "length".
    """
    return max(1, min(max_tokens, n_ctx // 2))


@dataclass(frozen=True)
class ContextBudget:
    """How many tokens each part of a request may take of the context, decided before the reply starts.

    ``reply`` is kept free for the answer; ``tools`` and ``documents`` are what tool schemas and
    retrieved passages may take (0 until those features exist); the conversation gets the rest and
    the context policy (`fit`) forgets old turns to stay inside it. A reply longer than its share is
    not cut by the budget: the backend shifts the context during generation, or ends with "length".
    """

    n_ctx: int
    reply: int
    tools: int = 0
    documents: int = 0

    def __post_init__(self) -> None:
        parts = (self.reply, self.tools, self.documents)
        if min(parts) < 0 or sum(parts) >= self.n_ctx:
            raise RuntimeFailure(
                ErrorKind.INVALID_PARAMS,
                f"The context ({self.n_ctx} tokens) cannot hold the reply ({self.reply}), tool schemas ({self.tools}) "
                f"and documents ({self.documents}) with any room left for the conversation.",
            )

    @classmethod
    def for_chat(cls, n_ctx: int, *, max_tokens: int, tools: int = 0, documents: int = 0) -> ContextBudget:
        """A conversation that may forget old turns: the reply's share is `reserve_for` (at most half)."""
        return cls(n_ctx, reserve_for(max_tokens, n_ctx - tools - documents), tools, documents)

    @classmethod
    def for_prompt(cls, n_ctx: int, *, prompt_tokens: int, max_tokens: int) -> ContextBudget:
        """A prompt kept whole (an API request): it must fit, and the reply gets what is left, up to
        ``max_tokens``. Too long a prompt is INVALID_PARAMS (the server's context_length_exceeded)."""
        if prompt_tokens >= n_ctx:
            raise RuntimeFailure(
                ErrorKind.INVALID_PARAMS,
                f"This prompt is {prompt_tokens} tokens; the loaded model's context holds {n_ctx}. Shorten it (context_length_exceeded).",
            )
        return cls(n_ctx, max(0, min(max_tokens, n_ctx - prompt_tokens)))

    @property
    def conversation(self) -> int:
        return self.n_ctx - self.reply - self.tools - self.documents


def fit(messages: Sequence[Message], policy: str, budget: ContextBudget, *, render: Render, floor: tuple[int, int] | None = None) -> Window:
    """`fit_window` within a budget: the rendered conversation and the reply's share within what
    the tool schemas and documents leave of the context."""
    return fit_window(messages, policy, n_ctx=budget.n_ctx - budget.tools - budget.documents, reserve=budget.reply, render=render, floor=floor)


@dataclass(frozen=True)
class Memory:
    """The conversation a backend's cache was last filled from, and the gap of it that was forgotten."""

    messages: tuple[dict[str, str], ...]
    start: int
    end: int


@dataclass(frozen=True)
class Window:
    """The request's messages minus one forgotten gap ``messages[start:end]`` (empty when start == end)."""

    messages: tuple[Message, ...]  # the whole request
    start: int  # messages before the gap: the system prompt (and the first turn for truncate_middle)
    end: int  # the first message after the gap
    tokens: list[int]  # the rendered kept messages

    @property
    def kept(self) -> list[Message]:
        return [*self.messages[: self.start], *self.messages[self.end :]]

    @property
    def dropped(self) -> int:
        return self.end - self.start


def turn_starts(messages: Sequence[Message]) -> list[int]:
    """Indices where a turn begins: the first non-system message, then every user message."""
    first = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    return [i for i in range(first, len(messages)) if i == first or messages[i]["role"] == "user"]


def fit_window(
    messages: Sequence[Message], policy: str, *, n_ctx: int, reserve: int, render: Render, floor: tuple[int, int] | None = None
) -> Window:
    """The messages to keep so that prompt + ``reserve`` fits in ``n_ctx``, forgetting as little as possible.

    ``floor`` is the gap the cache already forgot for an earlier request of the same conversation:
    the new window forgets at least that much, because bringing those turns back would mean
    re-evaluating everything after them. Raises INVALID_PARAMS when even the system prompt and the
    newest turn do not fit, or when the policy is stop_at_limit and the conversation is too long.
    """
    messages = tuple(messages)
    starts = turn_starts(messages)
    head = starts[0] if starts else len(messages)
    full = render(messages)
    fits_whole = len(full) + reserve <= n_ctx
    if not starts:  # only a system prompt: nothing to forget
        if len(full) >= n_ctx:
            raise _too_long(len(full), n_ctx)
        return Window(messages, head, head, full)
    if fits_whole and (floor is None or policy == STOP_AT_LIMIT):
        return Window(messages, head, head, full)
    if policy == STOP_AT_LIMIT:
        raise RuntimeFailure(
            ErrorKind.INVALID_PARAMS,
            f"The context is full: this conversation is {len(full)} tokens and the reply needs room for {reserve} more, "
            f"but the model's context holds {n_ctx}. Start a new conversation, choose the rolling-window or "
            "truncate-middle context policy, lower max_tokens, or load the model with a longer context.",
        )
    if policy == TRUNCATE_MIDDLE and len(starts) >= 3:
        head = starts[1]  # keep the first turn: it usually says what the conversation is about
    least = floor[1] if floor is not None and floor[0] == head else head
    if fits_whole and least == head:  # the earlier gap belonged to another policy: nothing to keep forgetting
        return Window(messages, head, head, full)
    ends = [e for e in starts if e >= least] or [starts[-1]]
    fits = _first_fitting(messages, head, ends, n_ctx - reserve, render)
    if fits is None and head != starts[0]:  # truncate_middle: the first turn has to go as well
        return fit_window(messages, ROLLING_WINDOW, n_ctx=n_ctx, reserve=reserve, render=render)
    if fits is None:
        end = starts[-1]
        tokens = render([*messages[:head], *messages[end:]])
        if len(tokens) >= n_ctx:
            raise _too_long(len(tokens), n_ctx)
        return Window(messages, head, end, tokens)  # fits without the full reserve: the reply may be short
    return fits


def _too_long(n_tokens: int, n_ctx: int) -> RuntimeFailure:
    return RuntimeFailure(
        ErrorKind.INVALID_PARAMS,
        f"The newest message is too long: with the system prompt it is {n_tokens} tokens, and the model's "
        f"context holds {n_ctx}. Shorten it, or load the model with a longer context.",
    )


def _first_fitting(messages: tuple[Message, ...], head: int, ends: list[int], budget: int, render: Render) -> Window | None:
    """The smallest gap end whose kept prompt fits in ``budget``; prompt length falls as the end grows."""
    lo, hi, best = 0, len(ends) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        tokens = render([*messages[:head], *messages[ends[mid] :]])
        if len(tokens) <= budget:
            best, hi = Window(messages, head, ends[mid], tokens), mid - 1
        else:
            lo = mid + 1
    return best


def next_turn(messages: Sequence[Message], end: int) -> int | None:
    """The start of the turn after the one at ``end``; None when that one is the newest (never forgotten)."""
    return next((s for s in turn_starts(messages) if s > end), None)


def boundary(prompt: Sequence[int], before: Sequence[Message], render: Render) -> int:
    """Where, in ``prompt``, the content of the turn that follows the messages ``before`` begins.

    Found by rendering ``before`` plus two probe user messages and seeing where they stop agreeing
    with the prompt; 0 when the template cannot render them.
    """
    try:
        return min(common_prefix(prompt, render([*before, probe])) for probe in _PROBES)
    except RuntimeFailure:
        return 0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _match(a: Sequence[int], i: int, b: Sequence[int], j: int) -> int:
    """Length of the common run of a[i:] and b[j:], without copying either."""
    n, limit = 0, min(len(a) - i, len(b) - j)
    while n < limit and a[i + n] == b[j + n]:
        n += 1
    return n


@dataclass(frozen=True)
class Reuse:
    keep: int  # cached tokens kept at the front (the system prompt)
    drop: int  # cached tokens after ``keep`` to forget; the rest moves left by this much
    reused: int  # prompt tokens whose KV is in the cache afterwards


def plan_reuse(held: Sequence[int], prompt: Sequence[int], keep: int) -> Reuse:
    """How to reuse the most of the cache for ``prompt``: a plain prefix, or a prefix plus a shifted tail.

    The shifted tail is valid only where the tokens agree exactly: ``held[keep + drop :]`` must match
    ``prompt[keep:]`` token for token, which is checked here rather than assumed from the template.
    """
    plain = common_prefix(held, prompt)
    best = Reuse(0, 0, plain)
    if plain >= len(held) or keep <= 0 or plain < keep or keep >= len(prompt):
        return best
    first = prompt[keep]
    for pos in range(keep + 1, len(held)):
        if held[pos] != first:
            continue
        run = _match(held, pos, prompt, keep)
        if keep + run > best.reused:
            best = Reuse(keep, pos - keep, keep + run)
    return best
