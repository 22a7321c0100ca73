"""Documents in a chat turn: how many tokens they may take, what goes in, and where it is placed.

The engine calls `with_documents` before the backend renders the prompt (`ChatParams.docs`):

* **The budget** is what the context leaves after the conversation and the reply's share
  (`context.ContextBudget`): ``n_ctx - reserve_for(max_tokens) - conversation``. A policy that may
  forget old turns (rolling window, truncate middle) guarantees documents at least a quarter of
  the context, and the policy then forgets the oldest turns to make room; "stop at the limit"
  never forgets, so documents get only what is left.
* **What goes in** is `retrieve`'s choice: every document whole when they all fit, else the best
  chunks for the question that fit.
* **Where**: whole documents go at the end of the system message. They do not depend on the
  question, so the rendered prefix (system prompt + documents) is the same token for token at the
  next question, and the llama.cpp loop's prefix reuse evaluates only the new turn. Chunks do
  depend on the question, so they go into the newest user message, after everything the cache
  already holds: the earlier turns' prefix stays valid too.

The result (`summary`) names the collection, the mode, the reason in words and every passage
with its file, page or line, so the answer can show its sources and link its [n] markers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from app.runtime.backends.context import STOP_AT_LIMIT, ContextBudget, reserve_for
from app.runtime.docs import store
from app.runtime.docs.index import Embedder
from app.runtime.docs.retrieve import Retrieval, retrieve
from app.runtime.protocol import ErrorKind, RuntimeFailure

Message = dict[str, str]
MIN_SHARE = 4  # a forgetting policy keeps at least n_ctx // MIN_SHARE tokens for documents
SLACK = 8  # tokens for the blank lines joining the documents to the message they go into
REMOTE_N_CTX = 4096  # a remote model's context is not known here: a size every served model has
CHARS_PER_TOKEN_ESTIMATE = 3  # for a remote model, whose tokenizer is not here (a cautious count)


def question_of(messages: Sequence[Message]) -> str:
    """The newest user message: what the documents are searched for."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def documents_budget(n_ctx: int, *, conversation: int, max_tokens: int, policy: str) -> ContextBudget | None:
    """The context shared out with documents in it; None when no token is left for them."""
    reply = reserve_for(max_tokens, n_ctx)
    left = n_ctx - reply - conversation - SLACK
    if policy != STOP_AT_LIMIT:
        left = max(left, n_ctx // MIN_SHARE)
    left = min(left, n_ctx - reply - 1)
    if left <= 0:
        return None
    return ContextBudget(n_ctx, reply, documents=left)


def place(messages: Sequence[Message], retrieval: Retrieval) -> tuple[Message, ...]:
    """The messages with the retrieved block placed for prefix reuse (see the module docstring)."""
    block = retrieval.prompt()
    out = [dict(m) for m in messages]
    if not block:
        return tuple(out)
    if retrieval.mode == "whole":
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{block}" if out[0]["content"] else block
        else:
            out.insert(0, {"role": "system", "content": block})
        return tuple(out)
    last = max((i for i, m in enumerate(out) if m["role"] == "user"), default=None)
    if last is None:
        out.append({"role": "user", "content": block})
    else:
        out[last]["content"] = f"{block}\n\nQuestion: {out[last]['content']}"
    return tuple(out)


def summary(retrieval: Retrieval) -> dict[str, Any]:
    """ChatResult.docs: which documents went in and why (the prompt block itself is left out)."""
    out = retrieval.to_dict()
    out.pop("prompt", None)
    return out


def with_documents(
    messages: Sequence[Message],
    request: dict[str, Any],
    *,
    n_ctx: int,
    max_tokens: int,
    policy: str,
    count_chat: Callable[[Sequence[Message]], int],
    count_text: Callable[[str], int],
    embedder: Embedder | None = None,
) -> tuple[tuple[Message, ...], dict[str, Any]]:
    """Retrieve from ``request["collection"]`` for the newest question and place what fits.

    ``count_chat`` counts a rendered conversation's tokens, ``count_text`` a passage's; both are
    the loaded model's tokenizer.
    """
    query = request.get("query") or question_of(messages)
    if not query.strip():
        raise RuntimeFailure(ErrorKind.INVALID_PARAMS, "There is no question to search the documents for.")
    budget = documents_budget(n_ctx, conversation=count_chat(messages), max_tokens=max_tokens, policy=policy)
    with store.open_collection(store.check_name(request["collection"])) as collection:
        if budget is None:
            retrieval = Retrieval(collection.name, query, "none", [], 0, 0,
                                  f"The conversation fills the context ({n_ctx:,} tokens) and the policy \"stop at the "
                                  "limit\" forgets nothing, so no document fits; the model answers without them.")
        else:
            retrieval = retrieve(collection, query, count_tokens=count_text, budget=budget.documents,
                                 max_passages=int(request.get("max_passages") or 8), embedder=embedder)
    return place(messages, retrieval), summary(retrieval)


def counters(backend: Any, chat_template: str | None) -> tuple[Callable[[Sequence[Message]], int], Callable[[str], int]]:
    """(count_chat, count_text) from a loaded backend's tokenizer, or estimates for a remote model."""
    if backend is None or not hasattr(backend, "tokenize_chat"):
        def estimate(text: str) -> int:
            return len(text) // CHARS_PER_TOKEN_ESTIMATE + 1

        return (lambda ms: sum(estimate(m["content"]) + 4 for m in ms)), estimate

    def count_chat(ms: Sequence[Message]) -> int:
        return len(backend.tokenize_chat(ms, chat_template))

    if hasattr(backend, "tokenize"):
        def count_text(text: str) -> int:
            return len(backend.tokenize(text, add_bos=False))
    else:  # the torch backend: a one-message chat less the same chat empty
        empty = count_chat([{"role": "user", "content": ""}])

        def count_text(text: str) -> int:
            return max(1, count_chat([{"role": "user", "content": text}]) - empty)

    return count_chat, count_text
