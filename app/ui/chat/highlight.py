"""Colours for the code blocks of finished replies: keywords, strings, comments and numbers.

`spans` is a small line-by-line tokenizer (no Qt), so it is easy to test and cheap enough to run on
every repaint; `highlight_code_blocks` applies it to the fenced code blocks that Qt's Markdown
importer left in a QTextDocument (they carry `BlockCodeLanguage`). Strings and comments that span
lines are not tracked: a reply's snippets are short, and a wrong colour there costs little.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from PySide6.QtGui import QColor, QFont, QTextBlock, QTextCharFormat, QTextCursor, QTextDocument, QTextFormat


@dataclass(frozen=True)
class Language:
    keywords: frozenset[str]
    comment: str  # a regex for a comment up to the end of the line


_C_LIKE = "//.*|/\\*.*?(\\*/|$)"
_LANGUAGES: dict[str, Language] = {
    "python": Language(frozenset(
        "and as assert async await break class continue def del elif else except False finally for from global if "
        "import in is lambda match case None nonlocal not or pass raise return self True try while with yield".split()), "#.*"),
    "javascript": Language(frozenset(
        "async await break case catch class const continue default delete do else export extends false finally for "
        "function if import in instanceof interface let new null of return static super switch this throw true try "
        "type typeof undefined var void while yield".split()), _C_LIKE),
    "c": Language(frozenset(
        "auto bool break case char class const continue default delete do double else enum extern false fn float for "
        "func go if impl import int let long match mut namespace new nullptr package private protected pub public "
        "return self short signed sizeof static struct super switch template this throw true try typedef union "
        "unsigned use using var void volatile while".split()), _C_LIKE),
    "shell": Language(frozenset(
        "if then else elif fi for while until do done case esac function in return export local echo cd".split()), "#.*"),
    "sql": Language(frozenset(
        "select from where insert into update delete create table drop alter join left right inner outer on group by "
        "order having limit and or not null as values set primary key index distinct union".split()), "--.*"),
}
_ALIASES = {"py": "python", "python3": "python", "js": "javascript", "ts": "javascript", "typescript": "javascript",
            "jsx": "javascript", "tsx": "javascript", "java": "c", "cpp": "c", "c++": "c", "cs": "c", "csharp": "c",
            "rust": "c", "rs": "c", "go": "c", "kotlin": "c", "swift": "c", "bash": "shell", "sh": "shell",
            "zsh": "shell", "console": "shell"}

STYLES = {  # kind -> (colour, bold, italic)
    "keyword": ("#7b30d0", True, False),
    "string": ("#067d17", False, False),
    "comment": ("#8c8c8c", False, True),
    "number": ("#1750eb", False, False),
}
_STRING = r"\"(?:\\.|[^\"\\])*\"?|'(?:\\.|[^'\\])*'?|`(?:\\.|[^`\\])*`?"
_NUMBER = r"\b(?:0[xX][0-9a-fA-F_]+|\d[\d_]*(?:\.\d+)?(?:[eE][+-]?\d+)?)\b"
_WORD = r"[A-Za-z_][A-Za-z0-9_]*"


def language(name: str) -> Language | None:
    """The rules for a fence's language name (``python``, ``js``, ...); Python's for an unnamed block."""
    name = (name or "python").strip().lower()
    return _LANGUAGES.get(_ALIASES.get(name, name))


@lru_cache(maxsize=None)
def _pattern(lang: Language) -> re.Pattern[str]:
    return re.compile(f"(?P<comment>{lang.comment})|(?P<string>{_STRING})|(?P<number>{_NUMBER})|(?P<word>{_WORD})")


def spans(line: str, lang: Language) -> list[tuple[int, int, str]]:
    """(start, length, kind) for each coloured token in one line of code, left to right."""
    found = []
    for match in _pattern(lang).finditer(line):
        kind = match.lastgroup
        if kind == "word":
            word = match.group()
            if word not in lang.keywords and word.lower() not in lang.keywords:
                continue
            kind = "keyword"
        found.append((match.start(), match.end() - match.start(), str(kind)))
    return found


def _format(kind: str) -> QTextCharFormat:
    colour, bold, italic = STYLES[kind]
    fmt = QTextCharFormat()
    fmt.setForeground(QColor(colour))
    if bold:
        fmt.setFontWeight(QFont.Weight.Bold)
    fmt.setFontItalic(italic)
    return fmt


def highlight_code_blocks(doc: QTextDocument, start: int = 0) -> None:
    """Colour every fenced code block from position `start` on (the answer, not the header)."""
    formats = {kind: _format(kind) for kind in STYLES}
    block: QTextBlock = doc.findBlock(start)
    while block.isValid():
        fence = block.blockFormat().property(QTextFormat.Property.BlockCodeFence)
        if fence:
            lang = language(str(block.blockFormat().property(QTextFormat.Property.BlockCodeLanguage) or ""))
            for offset, length, kind in spans(block.text(), lang) if lang else []:
                cursor = QTextCursor(doc)
                cursor.setPosition(block.position() + offset)
                cursor.setPosition(block.position() + offset + length, QTextCursor.MoveMode.KeepAnchor)
                cursor.mergeCharFormat(formats[kind])
        block = block.next()
