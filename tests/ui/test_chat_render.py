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


def test_each_code_block_shows_its_language_and_a_copy_link_that_copies_it(qtbot) -> None:  # type: ignore[no-untyped-def]
    from PySide6.QtCore import QPoint, QPointF, Qt
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QListView, QStyleOptionViewItem

    from app.ui.chat.delegate import MessageDelegate
    from app.ui.chat.transcript import ChatMessage, TranscriptModel

    reply = "Two ways:\n\n```python\nprint(1)\nprint(2)\n```\n\nor\n\n```sh\necho hi\n```\n"
    plain = _doc(reply).toPlainText()
    assert "python · Copy" in plain and "sh · Copy" in plain
    assert plain.index("python · Copy") < plain.index("print(1)") < plain.index("sh · Copy") < plain.index("echo hi")

    model = TranscriptModel()
    view = QListView()
    qtbot.addWidget(view)
    delegate = MessageDelegate(view)
    view.setModel(model)
    view.setItemDelegate(delegate)
    view.resize(600, 500)
    model.append(ChatMessage("assistant", reply))
    view.show()
    qtbot.waitExposed(view)
    index = model.index(0)
    rect = view.visualRect(index)
    option = QStyleOptionViewItem()
    option.initFrom(view)
    option.rect = rect
    links = {}
    for y in range(rect.top(), rect.bottom(), 3):
        for x in range(rect.left(), rect.right(), 4):
            anchor = delegate.anchor_at(option, index, QPointF(x, y))
            if anchor and anchor not in links:
                links[anchor] = QPoint(x, y)
    assert set(links) == {"copy-code:0", "copy-code:1"}
    QGuiApplication.clipboard().clear()
    with qtbot.waitSignal(delegate.sig_copied, timeout=5000) as copied:
        qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=links["copy-code:1"])
    assert copied.args == ["echo hi"]
    assert QGuiApplication.clipboard().text() == "echo hi"
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=links["copy-code:0"])
    qtbot.waitUntil(lambda: QGuiApplication.clipboard().text() == "print(1)\nprint(2)", timeout=5000)


def test_the_reply_line_and_the_context_bar_count_the_same_tokens(qtbot) -> None:  # type: ignore[no-untyped-def]
    context = {"n_ctx": 8192, "prompt_tokens": 40, "completion_tokens": 79}
    line = _doc("Hello.", stats={"tokens": 79, "tps": 10.0, "ttft_ms": 5, "context": context}).toPlainText()
    bar = ContextBar()
    qtbot.addWidget(bar)
    bar.show_context(context)
    assert "context 119/8192" in line
    assert bar.bar.format() == "119 / 8192 tokens"


def test_the_model_picker_shows_the_whole_name_at_the_default_window_size(qtbot) -> None:  # type: ignore[no-untyped-def]
    from PySide6.QtWidgets import QStyle, QStyleOptionComboBox

    from app.ui.bridge import RuntimeBridge
    from app.ui.main_window import MainWindow

    window = MainWindow(RuntimeBridge())  # never started: only the widgets matter here
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    bar = window.chat_page.toolbar
    bar.set_models([{"id": "a", "name": "SmolLM2-135M-Instruct", "quantization": "Q4_1"},
                    {"id": "b", "name": "Meta-Llama-3.1-8B-Instruct", "quantization": "Q4_K_M"}])
    for model_id in (None, "a", "b"):
        bar.select_model(model_id)
        qtbot.wait(10)  # one layout pass
        combo = bar.models
        option = QStyleOptionComboBox()
        combo.initStyleOption(option)
        field = combo.style().subControlRect(QStyle.ComplexControl.CC_ComboBox, option, QStyle.SubControl.SC_ComboBoxEditField, combo)
        assert field.width() >= combo.fontMetrics().horizontalAdvance(combo.currentText()), combo.currentText()
        assert combo.toolTip()
