"""Export to Markdown and JSON, import, and what a person is told about a bad file."""

from __future__ import annotations

import json

import pytest

from app.chats import ChatImportError, ChatStore, Conversation, MessageState, Role


@pytest.fixture
def rich(store: ChatStore) -> Conversation:
    """System prompt, settings, unicode, figures, two versions with their own tails, a cut reply."""
    conv = store.create_conversation(title="Tea ☕", system_prompt="Answer in one line.",
                                     settings={"temperature": 0.3, "stop": ["\n\n"]},
                                     model_id="smollm2-135m-q4_1")
    store.add_message(conv.id, Role.USER, "Green or black?")
    first = store.add_message(conv.id, Role.ASSISTANT, "Green — lighter.",
                              meta={"tokens": 4, "tokens_per_s": 55.0, "ttft_ms": 120})
    store.add_message(conv.id, Role.USER, "Why lighter?")
    second = store.add_version(first.id)
    store.append_text(second.id, "Black, if you like it strong; it is also")
    store.finish_message(second.id, MessageState.INTERRUPTED, meta={"tokens": 9})
    return store.conversation(conv.id)


def test_markdown_shows_the_transcript_as_seen(store: ChatStore, rich: Conversation) -> None:
    text = store.export_markdown(rich.id)
    assert text.startswith("# Tea ☕\n")
    assert "`smollm2-135m-q4_1`" in text and "Answer in one line." in text
    assert "## User\n\nGreen or black?" in text
    assert "## Assistant\n\nBlack, if you like it strong; it is also\n\n_(interrupted)_" in text
    assert "Green — lighter." not in text and "Why lighter?" not in text  # inactive version


def test_json_round_trip_is_equal(store: ChatStore, rich: Conversation) -> None:
    exported = store.export_json(rich.id)
    copy = store.import_json(exported)
    assert copy.id != rich.id
    assert store.export_json(copy.id) == exported
    assert store.import_json(exported.encode("utf-8")).title == "Tea ☕"  # bytes work too

    original, imported = store.snapshot(rich.id), store.snapshot(copy.id)
    assert [(c.title, c.system_prompt, c.settings, c.model_id, c.created_at, c.updated_at)
            for c in (original.conversation, imported.conversation)] == [
        (c.title, c.system_prompt, c.settings, c.model_id, c.created_at, c.updated_at)
        for c in (original.conversation, original.conversation)]
    strip = [(m.position, m.role, m.content, m.state, m.meta, m.created_at, m.active, m.version,
              m.version_count) for m in original.messages]
    assert [(m.position, m.role, m.content, m.state, m.meta, m.created_at, m.active, m.version,
             m.version_count) for m in imported.messages] == strip
    assert [m.content for m in store.messages(copy.id)] == [
        m.content for m in store.messages(rich.id)]


def test_a_hand_written_file_needs_only_roles_and_text(store: ChatStore) -> None:
    conv = store.import_json(json.dumps({"format": "hearth.conversation", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello", "state": "streaming"},
    ]}))
    assert conv.title == "Imported chat"
    shown = store.messages(conv.id)
    assert [(m.role, m.content, m.parent_id) for m in shown] == [
        (Role.USER, "hi", None), (Role.ASSISTANT, "hello", shown[0].id)]
    assert shown[1].state is MessageState.INTERRUPTED  # nothing will stream into it


def doc(**changes: object) -> str:
    base: dict[str, object] = {"format": "hearth.conversation", "format_version": 1,
                               "messages": [{"role": "user", "content": "hi"}]}
    base.update(changes)
    return json.dumps(base)


@pytest.mark.parametrize(("text", "message"), [
    ('{"format": "hearth.conversation",\n "messages": [}',
     r"not valid JSON \(line 2, column 15: Expecting value"),
    (b'{"title": "caf\xe9"}', "not UTF-8 text"),
    ('{"format": "hearth.conversation", "settings": {"t": NaN}}', "contains NaN"),
    ("[1, 2]", "holds a JSON object; this one holds a list"),
    (json.dumps({"messages": []}), 'not a Hearth conversation export: "format"'),
    (doc(format_version=9), "newer Hearth"),
    (doc(title=5), '"title" must be text; it is the number 5'),
    (doc(settings=[]), '"settings" must be an object'),
    (doc(messages={"role": "user"}), '"messages" must be a list; it is an object'),
    (doc(messages=["hi"]), r'messages\[0\] must be an object; it is the text "hi"'),
    (doc(messages=[{"content": "hi"}]), r'messages\[0\] is missing "role"'),
    (doc(messages=[{"role": "bot", "content": "x"}]),
     r'messages\[0\].role must be one of system, user, assistant; got "bot"'),
    (doc(messages=[{"role": "user", "content": None}]), r"messages\[0\].content must be text"),
    (doc(messages=[{"role": "user", "content": "a", "parent": 0}]),
     r"messages\[0\].parent must be null or the index of an earlier message"),
    (doc(messages=[{"role": "user", "content": "a", "state": "done"}]),
     r"messages\[0\].state must be one of complete, streaming, interrupted"),
    (doc(messages=[{"role": "user", "content": "a", "created_at": "yesterday"}]),
     r"messages\[0\].created_at must be a time in seconds"),
])
def test_bad_files_raise_a_readable_error_and_change_nothing(
    store: ChatStore, text: str | bytes, message: str
) -> None:
    with pytest.raises(ChatImportError, match=message):
        store.import_json(text)
    assert store.conversations() == []
