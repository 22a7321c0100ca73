"""Export to Markdown and JSON, and JSON import, as pure functions over snapshots.

The JSON file holds the whole tree (every version), with parents named by their index in the
file rather than by database id, so that export -> import -> export gives the same text and a file
can be imported into any Hearth. A hand-written file may leave out everything but each message's
`role` and `content`: a message without `parent` follows the one before it.

A message's parts (sources, tool calls and results) travel as its `parts` list, written only when
it has some, so an export without parts reads exactly as before; a Hearth that predates parts
imports such a file without them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import datetime
from typing import Any, TypeVar

from app.chats.errors import ChatImportError
from app.chats.models import (
    Conversation,
    ConversationSnapshot,
    Message,
    MessagePart,
    MessageState,
    PartKind,
    Role,
)
from app.chats.tree import active_path, number_versions, parents_first

# Keys never written into an export, at any depth of a conversation's settings or a message's
# meta: an export is made to be shared, and a key copied into either must not travel with it.
SECRET_KEYS = frozenset({"api_key", "apikey", "server_api_key", "authorization", "password", "secret",
                         "access_token", "hf_token", "token_secret"})
FORMAT = "hearth.conversation"
FORMAT_VERSION = 1
_ROLE_TITLES = {Role.SYSTEM: "System", Role.USER: "User", Role.ASSISTANT: "Assistant"}


def to_markdown(snapshot: ConversationSnapshot) -> str:
    """The transcript as the user sees it (active versions only), for reading and sharing."""
    conv = snapshot.conversation
    started = datetime.fromtimestamp(conv.created_at).astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines = [f"# {conv.title}", ""]
    if conv.model_id:
        lines.append(f"- Model: `{conv.model_id}`")
    lines += [f"- Started: {started}", ""]
    if conv.system_prompt:
        lines += ["## System prompt", "", conv.system_prompt, ""]
    parts = _parts_by_message(snapshot)
    for message in active_path(snapshot.messages):
        lines += [f"## {_ROLE_TITLES[message.role]}", "", message.content, ""]
        if message.state is not MessageState.COMPLETE:
            lines += [f"_({message.state.value})_", ""]
        sources = [p.data for p in parts.get(message.id, []) if p.kind is PartKind.SOURCE]
        if sources:
            lines += ["Sources:", ""]
            lines += [f"{i}. {source_label(s)}" for i, s in enumerate(sources, 1)] + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


def to_json(snapshot: ConversationSnapshot) -> str:
    conv = snapshot.conversation
    ordered = parents_first(snapshot.messages)
    index = {m.id: i for i, m in enumerate(ordered)}
    parts = _parts_by_message(snapshot)
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "title": conv.title,
        "created_at": conv.created_at,
        "updated_at": conv.updated_at,
        "system_prompt": conv.system_prompt,
        "model_id": conv.model_id,
        "settings": without_secrets(conv.settings),
        "messages": [
            {
                "parent": None if m.parent_id is None else index[m.parent_id],
                "active": m.active,
                "role": m.role.value,
                "content": m.content,
                "state": m.state.value,
                "meta": without_secrets(m.meta),
                "created_at": m.created_at,
                **({"parts": [{"kind": p.kind.value, "data": without_secrets(p.data)}
                              for p in parts[m.id]]} if parts.get(m.id) else {}),
            }
            for m in ordered
        ],
    }
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"


def source_label(data: dict[str, Any]) -> str:
    """Where a source part's passage is, for people: "notes.md, line 12", "paper.pdf, page 3"."""
    where = str(data.get("file") or data.get("collection") or "?")
    if data.get("whole"):
        return f"{where} (whole document)"
    if data.get("page"):
        return f"{where}, page {data['page']}"
    if data.get("line"):
        return f"{where}, line {data['line']}"
    return where


def _parts_by_message(snapshot: ConversationSnapshot) -> dict[int, list[MessagePart]]:
    grouped: dict[int, list[MessagePart]] = {}
    for part in sorted(snapshot.parts, key=lambda p: (p.message_id, p.seq)):
        grouped.setdefault(part.message_id, []).append(part)
    return grouped


def without_secrets(value: Any) -> Any:
    """`value` with every SECRET_KEYS entry removed, at any depth."""
    if isinstance(value, dict):
        return {k: without_secrets(v) for k, v in value.items() if str(k).lower() not in SECRET_KEYS}
    if isinstance(value, list):
        return [without_secrets(v) for v in value]
    return value


def from_json(text: str | bytes, *, now: float) -> ConversationSnapshot:
    """Parse and check an export; ids in the result are file indexes (the store assigns real ones).

    Raises ChatImportError naming the first problem and where it is.
    """
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise ChatImportError(f"This file is not UTF-8 text ({exc}).") from exc
    except json.JSONDecodeError as exc:
        raise ChatImportError(
            f"This file is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})."
        ) from exc
    if not isinstance(doc, dict):
        raise ChatImportError(
            f"A Hearth conversation file holds a JSON object; this one holds {_kind(doc)}."
        )
    if doc.get("format") != FORMAT:
        raise ChatImportError(
            f'This is not a Hearth conversation export: "format" should be "{FORMAT}",'
            f" found {json.dumps(doc.get('format'))}."
        )
    version = doc.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ChatImportError(f'"format_version" must be a whole number; it is {_kind(version)}.')
    if version > FORMAT_VERSION:
        raise ChatImportError(
            f"This conversation was exported by a newer Hearth (format {version}; this Hearth"
            f" reads up to {FORMAT_VERSION}). Update Hearth to import it."
        )
    created = _number(doc, "created_at", "", default=now)
    conversation = Conversation(
        id=0,
        title=_text(doc, "title", "", default="Imported chat"),
        created_at=created,
        updated_at=_number(doc, "updated_at", "", default=created),
        system_prompt=_text(doc, "system_prompt", "", default=""),
        settings=_object(doc, "settings", "", default={}),
        model_id=_optional_text(doc, "model_id", ""),
    )
    raw_messages = doc.get("messages", [])
    if not isinstance(raw_messages, list):
        raise ChatImportError(f'"messages" must be a list; it is {_kind(raw_messages)}.')
    messages = _messages(raw_messages, created)
    return ConversationSnapshot(conversation, tuple(messages), tuple(_parts(raw_messages)))


def _parts(raw_messages: list[Any]) -> list[MessagePart]:
    """Each message's `parts` list (already known to be objects), numbered from 0."""
    found: list[MessagePart] = []
    for i, raw in enumerate(raw_messages):
        listed = raw.get("parts", [])
        if not isinstance(listed, list):
            raise ChatImportError(f"messages[{i}].parts must be a list; it is {_kind(listed)}.")
        for seq, part in enumerate(listed):
            where = f"messages[{i}].parts[{seq}]"
            if not isinstance(part, dict):
                raise ChatImportError(f"{where} must be an object; it is {_kind(part)}.")
            kind = _enum(PartKind, part, "kind", where)
            found.append(MessagePart(i, seq, kind, _object(part, "data", where, default={})))
    return found


def _messages(raw_messages: list[Any], default_time: float) -> list[Message]:
    messages: list[Message] = []
    active_choice: dict[int | None, int] = {}  # parent -> chosen index; the last active wins
    for i, raw in enumerate(raw_messages):
        where = f"messages[{i}]"
        if not isinstance(raw, dict):
            raise ChatImportError(f"{where} must be an object; it is {_kind(raw)}.")
        parent = raw["parent"] if "parent" in raw else (i - 1 if i else None)
        if parent is not None and (
            not isinstance(parent, int) or isinstance(parent, bool) or not 0 <= parent < i
        ):
            raise ChatImportError(
                f"{where}.parent must be null or the index of an earlier message; it is"
                f" {_kind(parent)}."
            )
        role = _enum(Role, raw, "role", where)
        state = _enum(MessageState, raw, "state", where, default=MessageState.COMPLETE.value)
        if state is MessageState.STREAMING:
            state = MessageState.INTERRUPTED  # nothing will ever stream into an imported message
        active = raw.get("active", True)
        if not isinstance(active, bool):
            raise ChatImportError(f"{where}.active must be true or false; it is {_kind(active)}.")
        if active or parent not in active_choice:
            active_choice[parent] = i
        messages.append(
            Message(
                id=i,
                conversation_id=0,
                parent_id=parent,
                position=0 if parent is None else messages[parent].position + 1,
                role=role,
                content=_text(raw, "content", where),
                state=state,
                meta=_object(raw, "meta", where, default={}),
                created_at=_number(raw, "created_at", where, default=default_time),
            )
        )
    chosen = set(active_choice.values())
    return number_versions(dataclasses.replace(m, active=m.id in chosen) for m in messages)


def _reject_constant(name: str) -> Any:
    raise ChatImportError(f"This file contains {name}, which is not a number JSON allows.")


_MISSING: Any = object()
_E = TypeVar("_E", Role, MessageState, PartKind)


def _field(obj: dict[str, Any], key: str, where: str, default: Any) -> Any:
    if key in obj:
        return obj[key]
    if default is _MISSING:
        raise ChatImportError(f'{where or "The file"} is missing "{key}".')
    return default


def _name(where: str, key: str) -> str:
    return f"{where}.{key}" if where else f'"{key}"'


def _text(obj: dict[str, Any], key: str, where: str, default: Any = _MISSING) -> str:
    value = _field(obj, key, where, default)
    if not isinstance(value, str):
        raise ChatImportError(f"{_name(where, key)} must be text; it is {_kind(value)}.")
    return value


def _optional_text(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise ChatImportError(f"{_name(where, key)} must be text or null; it is {_kind(value)}.")
    return value


def _number(obj: dict[str, Any], key: str, where: str, default: float) -> float:
    value = _field(obj, key, where, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ChatImportError(
            f"{_name(where, key)} must be a time in seconds since 1970; it is {_kind(value)}."
        )
    return float(value)


def _object(obj: dict[str, Any], key: str, where: str, default: dict[str, Any]) -> dict[str, Any]:
    value = _field(obj, key, where, default)
    if not isinstance(value, dict):
        raise ChatImportError(f"{_name(where, key)} must be an object; it is {_kind(value)}.")
    return value


def _enum(
    enum: type[_E], obj: dict[str, Any], key: str, where: str, default: Any = _MISSING
) -> _E:
    value = _text(obj, key, where, default)
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise ChatImportError(
            f"{_name(where, key)} must be one of {allowed}; got {json.dumps(value)}."
        ) from None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the text {json.dumps(value[:40])}"
    return {list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
