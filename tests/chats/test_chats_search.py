"""Full-text search: what a person types, what they get back, and the index staying in sync."""

from __future__ import annotations

import pytest

from app.chats import ChatStore, MessageState, Role
from app.chats.search import fts_query


def fts_ok(store: ChatStore) -> None:
    """FTS5's own check that the index matches the message table (raises if it does not)."""
    store._conn().execute("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")


@pytest.fixture
def filled(store: ChatStore) -> dict[str, int]:
    ids = {}
    for title, texts in {
        "Cooking": ["How long do I boil an egg?", "About nine minutes for a hard-boiled egg."],
        "Travel": ["Best time to visit Kyoto?", "Spring, for the cherry blossoms."],
        "Café": ["Où est le café?", "Le café est près de la gare."],
    }.items():
        conv = store.create_conversation(title=title)
        ids[title] = conv.id
        for i, text in enumerate(texts):
            store.add_message(conv.id, (Role.USER, Role.ASSISTANT)[i % 2], text)
    return ids


def test_words_match_with_a_highlighted_snippet(store: ChatStore, filled: dict[str, int]) -> None:
    (hit,) = store.search("cherry blossoms")
    assert (hit.conversation_id, hit.title) == (filled["Travel"], "Travel")
    assert store.message(hit.message_id).content == "Spring, for the cherry blossoms."
    assert "[cherry] [blossoms]" in hit.snippet
    (hit,) = store.search("kyoto", marks=("<b>", "</b>"))
    assert "<b>Kyoto</b>" in hit.snippet


def test_every_word_must_match_and_the_last_is_a_prefix(
    store: ChatStore, filled: dict[str, int]
) -> None:
    assert [h.conversation_id for h in store.search("boil egg")] == [filled["Cooking"]]
    assert store.search("boil kyoto") == []
    assert [h.conversation_id for h in store.search("cher")] == [filled["Travel"]]  # typing
    assert store.search("cher blossoms") == []  # only the last word is a prefix
    assert [h.conversation_id for h in store.search("cafe")] == [filled["Café"]]  # diacritics


def test_one_hit_per_conversation_and_limit(store: ChatStore, filled: dict[str, int]) -> None:
    hits = store.search("egg")  # both Cooking messages match
    assert [h.conversation_id for h in hits] == [filled["Cooking"]]
    assert {h.conversation_id for h in store.search("for")} == {filled["Cooking"], filled["Travel"]}
    assert len(store.search("for", limit=1)) == 1


def test_phrases_and_query_syntax_typed_by_people(store: ChatStore, filled: dict[str, int]) -> None:
    assert [h.conversation_id for h in store.search('"hard-boiled egg"')] == [filled["Cooking"]]
    assert store.search('"egg hard"') == []
    for odd in ['"unbalanced', "AND", "egg OR", "NOT egg", "(egg", "egg*", "col:egg", "-", "", " "]:
        store.search(odd)  # never a syntax error
    assert store.search("---  ...") == []


def test_fts_query_quotes_everything() -> None:
    assert fts_query("boil egg") == '"boil" "egg"*'
    assert fts_query('say "hello world"') == '"say" "hello world"'
    assert fts_query('a"b') == '"a""b"*'
    assert fts_query("... !!") is None


def test_index_follows_streaming_edits_and_deletes(store: ChatStore) -> None:
    conv = store.create_conversation(title="Live")
    reply = store.add_message(conv.id, Role.ASSISTANT, state=MessageState.STREAMING)
    store.append_text(reply.id, "The answer is ")
    assert store.search("answer")  # text is findable while it streams
    store.finish_message(reply.id, tail="forty-two")
    assert [h.message_id for h in store.search("forty")] == [reply.id]

    edited = store.edit_message(reply.id, "Actually, seven")
    hits = store.search("seven")
    assert [h.message_id for h in hits] == [edited.id]
    assert [h.message_id for h in store.search("forty")] == [reply.id]  # old versions too
    fts_ok(store)

    store.delete_conversation(conv.id)
    assert store.search("seven") == [] and store.search("forty") == []
    fts_ok(store)
