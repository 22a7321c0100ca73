"""Conversations and messages: create, list, stream, edit, versions, branch, delete and undo."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from app.chats import (
    ChatStore,
    ConversationSnapshot,
    InvalidOperation,
    Message,
    MessageState,
    NotFound,
    Role,
)

Chain = Callable[..., list[Message]]  # the add_chain fixture


def contents(messages: list) -> list[str]:
    return [m.content for m in messages]


def test_create_rename_update_and_list_newest_first(store: ChatStore) -> None:
    a = store.create_conversation(title="A", system_prompt="Be brief.", settings={"t": 0.7})
    b = store.create_conversation(title="B", model_id="smollm2-135m")
    assert (a.system_prompt, a.settings, a.model_id) == ("Be brief.", {"t": 0.7}, None)
    assert [c.id for c in store.conversations()] == [b.id, a.id]

    store.add_message(a.id, Role.USER, "hello")  # activity moves A to the top
    assert [c.id for c in store.conversations()] == [a.id, b.id]
    assert [c.id for c in store.conversations(limit=1)] == [a.id]

    renamed = store.rename_conversation(b.id, "Bee")
    assert renamed.title == "Bee" and renamed.updated_at > b.updated_at
    updated = store.update_conversation(b.id, settings={"top_p": 0.9}, model_id=None)
    assert (updated.title, updated.settings, updated.model_id) == ("Bee", {"top_p": 0.9}, None)
    assert store.conversation(b.id) == updated


def test_missing_ids_and_bad_values_raise_typed_errors(store: ChatStore) -> None:
    with pytest.raises(NotFound, match="Conversation 42"):
        store.conversation(42)
    with pytest.raises(NotFound):
        store.add_message(42, Role.USER, "hi")
    with pytest.raises(NotFound, match="Message 7"):
        store.message(7)
    conv = store.create_conversation()
    with pytest.raises(InvalidOperation, match="JSON"):
        store.update_conversation(conv.id, settings={"bad": object()})
    assert store.conversation(conv.id).settings == {}


def test_messages_follow_each_other_in_order(store: ChatStore, add_chain: Chain) -> None:
    conv = store.create_conversation()
    chain = add_chain(conv, "q1", "a1", "q2")
    shown = store.messages(conv.id)
    assert shown == chain
    assert [m.position for m in shown] == [0, 1, 2]
    assert [m.parent_id for m in shown] == [None, chain[0].id, chain[1].id]
    assert [m.role for m in shown] == [Role.USER, Role.ASSISTANT, Role.USER]
    assert store.message(chain[1].id) == chain[1]


def test_streaming_append_and_finish(store: ChatStore) -> None:
    conv = store.create_conversation()
    store.add_message(conv.id, Role.USER, "Count to three")
    reply = store.add_message(conv.id, Role.ASSISTANT, state=MessageState.STREAMING,
                              meta={"model": "m"})
    for part in ("one, ", "two, ", ""):
        store.append_text(reply.id, part)
    assert store.message(reply.id).content == "one, two, "

    done = store.finish_message(reply.id, tail="three", meta={"tokens": 5, "tokens_per_s": 41.5})
    assert done.content == "one, two, three"
    assert done.state is MessageState.COMPLETE
    assert done.meta == {"model": "m", "tokens": 5, "tokens_per_s": 41.5}

    with pytest.raises(InvalidOperation, match="not streaming"):
        store.append_text(reply.id, "four")
    with pytest.raises(InvalidOperation, match="already complete"):
        store.finish_message(reply.id, MessageState.INTERRUPTED)
    with pytest.raises(NotFound):
        store.append_text(9999, "lost?")
    assert store.message(reply.id).content == "one, two, three"


def test_stop_marks_interrupted_and_keeps_text(store: ChatStore) -> None:
    conv = store.create_conversation()
    reply = store.add_message(conv.id, Role.ASSISTANT, state=MessageState.STREAMING)
    store.append_text(reply.id, "partial")
    stopped = store.finish_message(reply.id, MessageState.INTERRUPTED)
    assert (stopped.content, stopped.state) == ("partial", MessageState.INTERRUPTED)


def test_regenerate_keeps_versions_and_switches(store: ChatStore, add_chain: Chain) -> None:
    conv = store.create_conversation()
    question, first = add_chain(conv, "Name a colour", "Red")
    second = store.add_version(first.id)
    assert (second.state, second.version, second.version_count) == (MessageState.STREAMING, 2, 2)
    store.append_text(second.id, "Blue")
    store.finish_message(second.id)
    assert contents(store.messages(conv.id)) == ["Name a colour", "Blue"]
    assert [(v.content, v.version, v.active) for v in store.versions(first.id)] == [
        ("Red", 1, False), ("Blue", 2, True)]

    shown = store.switch_version(first.id)
    assert contents(shown) == ["Name a colour", "Red"]
    assert (shown[1].version, shown[1].version_count) == (1, 2)
    follow_up = store.add_message(conv.id, Role.USER, "Why red?")  # continues under "Red"
    assert follow_up.parent_id == first.id

    assert contents(store.switch_version(second.id)) == ["Name a colour", "Blue"]
    assert contents(store.switch_version(first.id)) == ["Name a colour", "Red", "Why red?"]
    assert store.messages(conv.id)[0] == question


def test_edit_truncates_and_the_old_tail_is_recoverable(store: ChatStore, add_chain: Chain) -> None:
    conv = store.create_conversation()
    q1, a1, q2, a2 = add_chain(conv, "q1", "a1", "q2", "a2")
    edited = store.edit_message(q2.id, "q2, better")
    assert (edited.role, edited.state, edited.version, edited.version_count) == (
        Role.USER, MessageState.COMPLETE, 2, 2)
    assert contents(store.messages(conv.id)) == ["q1", "a1", "q2, better"]

    rerun = store.add_message(conv.id, Role.ASSISTANT, "a2, better")
    assert rerun.parent_id == edited.id
    assert contents(store.switch_version(q2.id)) == ["q1", "a1", "q2", "a2"]
    assert contents(store.switch_version(edited.id)) == ["q1", "a1", "q2, better", "a2, better"]


def test_switch_version_reveals_a_message_in_an_old_version(
    store: ChatStore, add_chain: Chain
) -> None:
    conv = store.create_conversation()
    _, a1, _ = add_chain(conv, "q1", "a1", "deep")
    deep = store.messages(conv.id)[2]
    store.edit_message(a1.id, "a1 edited")  # hides "deep"
    assert contents(store.messages(conv.id)) == ["q1", "a1 edited"]
    assert contents(store.switch_version(deep.id)) == ["q1", "a1", "deep"]


def test_branch_copies_the_path_up_to_a_message(store: ChatStore, add_chain: Chain) -> None:
    conv = store.create_conversation(title="Trip", system_prompt="sys", settings={"t": 1},
                                     model_id="m1")
    q1, a1, q2, _ = add_chain(conv, "q1", "a1", "q2", "a2")
    store.add_version(a1.id, content="a1 v2", state=MessageState.COMPLETE)

    branched = store.branch(a1.id)  # from the now inactive first version
    assert branched.id != conv.id
    assert (branched.title, branched.system_prompt, branched.settings, branched.model_id) == (
        "Trip (branch)", "sys", {"t": 1}, "m1")
    copied = store.messages(branched.id)
    assert contents(copied) == ["q1", "a1"]
    assert all(m.conversation_id == branched.id for m in copied)
    assert {m.id for m in copied}.isdisjoint({q1.id, a1.id})
    assert [m.version_count for m in copied] == [1, 1]
    assert contents(store.messages(conv.id)) == ["q1", "a1 v2"]  # the source is untouched
    assert store.branch(q2.id, title="Other").title == "Other"


def test_branching_a_streaming_reply_copies_it_as_interrupted(store: ChatStore) -> None:
    conv = store.create_conversation()
    reply = store.add_message(conv.id, Role.ASSISTANT, "half", state=MessageState.STREAMING)
    copy = store.messages(store.branch(reply.id).id)
    assert (copy[0].content, copy[0].state) == ("half", MessageState.INTERRUPTED)
    assert store.message(reply.id).state is MessageState.STREAMING


def test_delete_and_undo_restores_everything_with_the_same_ids(
    store: ChatStore, add_chain: Chain
) -> None:
    conv = store.create_conversation(title="Keep me", settings={"seed": 3})
    _, a1 = add_chain(conv, "question", "answer")
    store.add_version(a1.id, content="answer 2", state=MessageState.COMPLETE)
    before = store.snapshot(conv.id)

    deleted = store.delete_conversation(conv.id)
    assert deleted == before
    with pytest.raises(NotFound):
        store.conversation(conv.id)
    assert store.conversations() == [] and store.search("answer") == []
    newer = store.create_conversation()
    assert newer.id > conv.id  # ids are never reused, so undo can put the old ones back

    restored = store.restore(deleted)
    assert restored == before.conversation
    assert store.snapshot(conv.id) == before
    assert [hit.conversation_id for hit in store.search("answer")] == [conv.id]
    with pytest.raises(InvalidOperation, match="restored already"):
        store.restore(deleted)


def test_a_failed_write_changes_nothing(store: ChatStore, add_chain: Chain) -> None:
    """The conversation row goes in first; the clashing message id then fails the transaction."""
    other = store.create_conversation()
    (taken,) = add_chain(other, "occupies an id")
    conv = store.create_conversation()
    add_chain(conv, "mine")
    snapshot = store.delete_conversation(conv.id)
    clash = ConversationSnapshot(snapshot.conversation, (
        dataclasses.replace(snapshot.messages[0], id=taken.id),))
    with pytest.raises(InvalidOperation):
        store.restore(clash)
    assert [c.id for c in store.conversations()] == [other.id]
    assert store.messages(other.id) == [taken]


def test_closed_store_refuses_work_and_reopens_with_data(db_path: Path) -> None:
    store = ChatStore(db_path)
    conv = store.create_conversation(title="persisted")
    store.close()
    store.close()  # idempotent
    with pytest.raises(InvalidOperation, match="closed"):
        store.conversations()
    with ChatStore(db_path) as again:
        assert again.conversation(conv.id).title == "persisted"


def test_pragmas_durability_settings(store: ChatStore) -> None:
    db = store._conn()  # white-box: these settings are per connection
    conv = store.create_conversation()
    reply = store.add_message(conv.id, Role.ASSISTANT, state=MessageState.STREAMING)
    store.append_text(reply.id, "x")  # switches to NORMAL for one statement, then back
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
