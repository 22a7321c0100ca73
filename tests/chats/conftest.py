"""Fixtures for the conversation store: a real SQLite file in tmp_path and a predictable clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.chats import ChatStore, Conversation, Message, MessageState, Role


class StepClock:
    """Each reading is one second after the last, so "newest first" never depends on timing."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "chats.sqlite3"


@pytest.fixture
def open_store() -> Iterator[Callable[[Path], ChatStore]]:
    """Opens stores with a StepClock and closes whatever the test left open."""
    opened: list[ChatStore] = []

    def _open(path: Path) -> ChatStore:
        opened.append(ChatStore(path, clock=StepClock()))
        return opened[-1]

    yield _open
    for store in opened:
        store.close()


@pytest.fixture
def store(db_path: Path, open_store: Callable[[Path], ChatStore]) -> ChatStore:
    return open_store(db_path)


AddChain = Callable[..., list[Message]]


@pytest.fixture
def add_chain(store: ChatStore) -> AddChain:
    """`add_chain(conversation, "q", "a", ...)`: alternate user / assistant finished messages."""

    def _add(conversation: Conversation, *texts: str) -> list[Message]:
        roles = (Role.USER, Role.ASSISTANT)
        return [
            store.add_message(conversation.id, roles[i % 2], text, state=MessageState.COMPLETE)
            for i, text in enumerate(texts)
        ]

    return _add
