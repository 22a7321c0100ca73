"""Pure functions over a conversation's message tree (see `models` for the shape).

Kept apart from SQL so that the rules (which version is shown, how versions are numbered) are
stated once and used alike by the store, export and branching.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Sequence

from app.chats.models import Message


def number_versions(messages: Iterable[Message]) -> list[Message]:
    """Fill `version` / `version_count`; `messages` must hold every sibling of each message."""
    messages = list(messages)
    groups = children(messages)  # each group sorted by id: ids grow with creation
    rank = {m.id: i for group in groups.values() for i, m in enumerate(group, start=1)}
    return [
        dataclasses.replace(m, version=rank[m.id], version_count=len(groups[m.parent_id]))
        for m in messages
    ]


def children(messages: Iterable[Message]) -> dict[int | None, list[Message]]:
    kids: dict[int | None, list[Message]] = defaultdict(list)
    for m in messages:
        kids[m.parent_id].append(m)
    for group in kids.values():
        group.sort(key=lambda m: m.id)
    return kids


def active_path(messages: Iterable[Message]) -> list[Message]:
    """The transcript the user sees: from the root, follow the active child at each turn.

    A turn with no active child (only possible in hand-written data) shows its newest version,
    so a malformed tree still displays instead of hiding text.
    """
    kids = children(messages)
    path: list[Message] = []
    parent: int | None = None
    while kids.get(parent):
        group = kids[parent]
        chosen = next((m for m in group if m.active), group[-1])
        path.append(chosen)
        parent = chosen.id
    return path


def ancestry(messages: Sequence[Message], message_id: int) -> list[Message]:
    """The message and everything before it, root first, whatever versions are active."""
    by_id = {m.id: m for m in messages}
    chain: list[Message] = []
    current: int | None = message_id
    while current is not None:
        message = by_id[current]
        chain.append(message)
        current = message.parent_id
    chain.reverse()
    return chain


def parents_first(messages: Iterable[Message]) -> list[Message]:
    """Order for inserting: by depth, then creation; every parent precedes its children."""
    return sorted(messages, key=lambda m: (m.position, m.id))
