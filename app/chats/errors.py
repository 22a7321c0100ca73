"""Typed errors of the conversation store.

Every error carries a sentence a person can act on, because the GUI shows it as it is (one
notification sink). Callers that need to branch catch the subclass; everything else catches
`ChatStoreError`.
"""

from __future__ import annotations


class ChatStoreError(Exception):
    """Base class: anything the conversation store refuses or cannot do."""


class DatabaseUnreadable(ChatStoreError):
    """The chat file is not a SQLite database, is damaged, or cannot be opened.

    The store never moves or rewrites such a file: the user's conversations may still be
    recoverable from it with other tools.
    """


class DatabaseDamaged(DatabaseUnreadable):
    """The chat file is damaged (failed `PRAGMA quick_check`, is empty, or is not a database).

    `ChatStore` itself still leaves such a file alone; `open_history` moves it aside and salvages
    what it can, so that damage never locks a person out of the studio.
    """


class SchemaTooNew(ChatStoreError):
    """The file was written by a newer Hearth; this version must not touch it."""


class NotFound(ChatStoreError, LookupError):
    """A conversation or message id that is not (or no longer) in the store."""


class InvalidOperation(ChatStoreError, ValueError):
    """A request that contradicts the stored state, e.g. appending to a finished reply."""


class ChatImportError(ChatStoreError, ValueError):
    """An import file that is not a Hearth conversation, with where and why it is wrong."""
