"""Long natural English text for perplexity: Jane Austen's *Persuasion* (1818, public domain).

Shipped in resources/texts/ (see its README.md for where it came from). Two disjoint parts, so a
figure measured on one is not flattered by anything tuned on the other:

* ``long_text()``: Volume I (chapters 1-12), 53,281 SmolLM2 tokens: calibration, KV bench;
* ``held_out_text()``: Volume II (chapters 13-24), 62,580 tokens: evaluation.

resources/ sits next to app/ in a checkout and under ``sys._MEIPASS`` in a frozen build, as for the
UI's resources (app/ui/resources.py, which this runtime module must not import: it pulls in Qt).
"""

from __future__ import annotations

import functools

from app.paths import resource_folders
from app.runtime.protocol import ErrorKind, RuntimeFailure

BOOK = "texts/persuasion.txt"
SPLIT_MARK = "\nChapter 13\n"  # the first chapter of Volume II


@functools.lru_cache(maxsize=1)
def _book() -> str:
    for folder in resource_folders():
        path = folder / BOOK
        if path.is_file():
            return path.read_text(encoding="utf-8")
    raise RuntimeFailure(
        ErrorKind.INTERNAL,
        f"The evaluation text {BOOK} is missing from Hearth's resources; looked in: "
        + ", ".join(str(p) for p in resource_folders()),
    )


def _halves() -> tuple[str, str]:
    book = _book()
    cut = book.index(SPLIT_MARK)
    return book[:cut].strip() + "\n", book[cut:].strip() + "\n"


def long_text() -> str:
    """Volume I of *Persuasion* (title page and chapters 1-12)."""
    return _halves()[0]


def held_out_text() -> str:
    """Volume II of *Persuasion* (chapters 13-24), disjoint from ``long_text()``."""
    return _halves()[1]
