"""How a reply looks: Markdown with monospace code once finished, reasoning apart, the context bar."""

from __future__ import annotations

from PySide6.QtGui import QTextDocument

from app.ui.chat.render import build_document, split_thinking
from app.ui.chat.toolbar import ChatToolbar, ContextBar


def _doc(text: str, state: str = "complete", stats: dict | None = None) -> QTextDocument:  # type: ignore[type-arg]
    doc = QTextDocument()
    build_document(doc, role="assistant", text=text, state=state, stats=stats or {}, version=(2, 3))
    return doc


def test_a_finished_reply_is_markdown_with_monospace_code(qtbot) -> None:  # type: ignore[no-untyped-def]
    doc = _doc("Some **bold** text.\n\n```python\nprint(1)\n```\n")
    plain = doc.toPlainText()
    assert "**" not in plain and "print(1)" in plain and "‹ 2/3 ›" in plain
    block = doc.begin()
    while block.isValid() and "print(1)" not in block.text():
        block = block.next()
    assert block.charFormat().fontFixedPitch() or block.blockFormat().nonBreakableLines()
    streaming = _doc("Some **bold", state="streaming")
    assert "**bold" in streaming.toPlainText()  # plain text while it streams


def test_thinking_is_shown_apart_from_the_answer(qtbot) -> None:  # type: ignore[no-untyped-def]
    assert split_thinking("<think>Let me see.</think>The answer is 4.") == ("Let me see.", "The answer is 4.")
    assert split_thinking("<think>still going") == ("still going", "")
    plain = _doc("<think>Let me see.</think>The answer is 4.").toPlainText()
    assert "Thinking… Let me see." in plain and "<think>" not in plain


def test_context_bar_and_dropped_notice(qtbot) -> None:  # type: ignore[no-untyped-def]
    bar = ContextBar()
    qtbot.addWidget(bar)
    bar.show_context(None)
    assert not bar.isVisibleTo(bar.parentWidget() or bar) or bar.isHidden()
    bar.show_context({"n_ctx": 2048, "prompt_tokens": 1000, "completion_tokens": 24, "dropped_messages": 2})
    assert not bar.isHidden() and bar.bar.value() == 1024 and bar.bar.maximum() == 2048
    assert "2 older messages" in bar.dropped.text()


def test_model_picker_keeps_the_choice(qtbot) -> None:  # type: ignore[no-untyped-def]
    bar = ChatToolbar()
    qtbot.addWidget(bar)
    bar.set_models([{"id": "a", "name": "Alpha", "quantization": "Q4_1"}, {"id": "b", "name": "Beta"}])
    bar.select_model("b")
    bar.set_models([{"id": "b", "name": "Beta"}, {"id": "c", "name": "Gamma"}])
    assert bar.current_model() == "b" and bar.models.count() == 3
    assert bar.models.itemText(0).startswith("Default")


def test_a_python_code_block_is_coloured(qtbot) -> None:  # type: ignore[no-untyped-def]
    doc = _doc("Here:\n\n```python\ndef f(x):  # add one\n    return x + 1, 'one'\n```\n\nDone.")
    colours: dict[str, set[str]] = {}
    block = doc.begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            fragment = it.fragment()
            colours.setdefault(block.text(), set()).add(fragment.charFormat().foreground().color().name())
            it += 1
        block = block.next()
    code = colours["def f(x):  # add one"] | colours["    return x + 1, 'one'"]
    assert len(code) >= 4  # keyword, comment, number, string (and plain text)
    assert len(colours["Done."]) == 1 and len(colours["Here:"]) == 1  # prose is left alone


def test_the_tokenizer_finds_keywords_strings_comments_and_numbers() -> None:
    from app.ui.chat.highlight import language, spans

    python = language("py")
    assert python is not None
    kinds = [(line[s:s + n], k) for line in ['x = "a#b"  # note', "if n > 0x1F: return None"]
             for s, n, k in spans(line, python)]
    assert kinds == [('"a#b"', "string"), ("# note", "comment"), ("if", "keyword"), ("0x1F", "number"),
                     ("return", "keyword"), ("None", "keyword")]
    js = language("js")
    assert js is not None and [k for _, _, k in spans("const s = 'x'; // done", js)] == ["keyword", "string", "comment"]
    assert language("text") is None  # an unknown language stays plain
