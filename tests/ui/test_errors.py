"""Every ErrorKind reaches a person in words with something to do about it."""

from __future__ import annotations

import pytest

from app.runtime.protocol import ErrorKind, RuntimeFailure
from app.ui.errors import WORDS, worded, wording

MESSAGE = "The file /tmp/x.gguf said no"


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_every_kind_is_worded_with_an_action(kind: ErrorKind) -> None:
    text = worded(RuntimeFailure(kind, MESSAGE))
    assert text.strip() and text != kind.value and not text.startswith(kind.value)  # never the bare enum value
    assert MESSAGE in text  # the runtime's own sentence, about this request, is kept
    words = WORDS[kind]
    assert words.headline and words.action and text.endswith(words.action)
    assert worded(RuntimeFailure(kind, "")) == f"{words.headline} {words.action}"  # no message: still words


def test_kinds_read_differently() -> None:
    texts = {worded(RuntimeFailure(kind, MESSAGE)) for kind in ErrorKind}
    assert len(texts) == len(ErrorKind)
    assert set(WORDS) == set(ErrorKind)


def test_a_kind_this_studio_does_not_know_reads_as_internal() -> None:
    assert wording("kind_from_a_newer_runtime") == WORDS[ErrorKind.INTERNAL]
    assert wording("out_of_memory") == WORDS[ErrorKind.OUT_OF_MEMORY]
