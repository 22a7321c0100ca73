"""Export and import of conversations as files: the core the page's dialogs (and tests) call."""

from __future__ import annotations

from pathlib import Path

from app.chats import ChatStore, Conversation

FORMATS = {".md": "markdown", ".markdown": "markdown", ".json": "json"}


def export_conversation(store: ChatStore, conversation_id: int, path: str | Path) -> Path:
    """Write the conversation to `path`: Markdown for .md, JSON (every version) for .json."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"Choose a file ending in .md or .json, not {path.name!r}.")
    text = store.export_markdown(conversation_id) if kind == "markdown" else store.export_json(conversation_id)
    path.write_text(text, encoding="utf-8")
    return path


def import_conversation(store: ChatStore, path: str | Path) -> Conversation:
    """Add the conversation in a Hearth JSON export as a new one (ChatImportError if it is not)."""
    return store.import_json(Path(path).read_bytes())
