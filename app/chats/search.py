"""Full-text search over message text (SQLite FTS5, kept in sync by triggers; see `schema`).

What a person types is never passed to FTS5 as query syntax: an unbalanced quote or a stray
`AND` would be a syntax error, or worse a silently different query. Each word becomes a quoted
string, words must all match, "quoted phrases" stay phrases, and the last word matches as a
prefix so results appear while typing.
"""

from __future__ import annotations

import re
import sqlite3

from app.chats.models import SearchHit

_TERM = re.compile(r'"([^"]*)"?|(\S+)')


def fts_query(text: str) -> str | None:
    """The FTS5 query for what the user typed, or None when there is nothing to search for."""
    parts: list[str] = []
    last_is_word = False
    for phrase, word in _TERM.findall(text):
        term = phrase if phrase else word
        if not re.search(r"\w", term):
            continue  # punctuation alone tokenizes to nothing and would match nothing
        parts.append('"' + term.replace('"', '""') + '"')
        last_is_word = bool(word)
    if not parts:
        return None
    if last_is_word:
        parts[-1] += "*"
    return " ".join(parts)


def search(
    db: sqlite3.Connection, text: str, *, limit: int, marks: tuple[str, str]
) -> list[SearchHit]:
    """Best-ranked hit per conversation, best conversations first, at most `limit` of them."""
    query = fts_query(text)
    if query is None or limit <= 0:
        return []
    rows = db.execute(
        """
        SELECT m.conversation_id, c.title, m.id,
               snippet(messages_fts, 0, ?, ?, '…', 12)
          FROM messages_fts
          JOIN messages m ON m.id = messages_fts.rowid
          JOIN conversations c ON c.id = m.conversation_id
         WHERE messages_fts MATCH ?
         ORDER BY bm25(messages_fts), m.id DESC""",
        (marks[0], marks[1], query),
    )
    hits: dict[int, SearchHit] = {}
    try:
        for conversation_id, title, message_id, snippet in rows:  # lazily, best first
            if conversation_id not in hits:
                hits[conversation_id] = SearchHit(conversation_id, title, message_id, snippet)
                if len(hits) == limit:
                    break
    finally:
        rows.close()  # end the read at once, not when the cursor is collected
    return list(hits.values())
