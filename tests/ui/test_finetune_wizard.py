"""The fine-tune wizard, offscreen, with the real worker: base model to "Chat with it" on a tiny run.

Two optimizer steps of LoRA on SmolLM2 (a few seconds of training), then a real GGUF export (F16
conversion, Q8_0 quantization) into a private library, where "Chat with it" finds it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt

from app.ui.bridge import RuntimeBridge
from app.ui.wizards.finetune import FinetunePage

FACTS = Path(__file__).parents[1] / "data" / "facts" / "train.jsonl"



@pytest.fixture
def bridge(qtbot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RuntimeBridge]:
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path / "home"))  # the worker inherits it: a private library
    bridge = RuntimeBridge()
    with qtbot.waitSignal(bridge.sig_ready, timeout=60_000):
        bridge.start()
    yield bridge
    bridge.close()


@pytest.mark.slow
def test_wizard_base_to_chat_on_a_tiny_run(qtbot: Any, bridge: RuntimeBridge, smollm2_hf: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    lines = FACTS.read_text(encoding="utf-8").splitlines()[:8]
    lines.insert(2, '{"messages": [')  # line 3: malformed
    lines.insert(5, json.dumps({"messages": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "x"}]}))  # line 6
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")

    page = FinetunePage(bridge)
    qtbot.addWidget(page)
    page.show()
    qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
    wizard = page.wizard
    assert wizard is not None and wizard.isVisible()

    # 1. base model: the library's models fill the list (checked at the end); this run uses the HF folder
    base = wizard.base_page
    assert not base.path.text()
    base.path.setText(str(smollm2_hf))
    assert base.isComplete()
    wizard.next()

    # 2. data: the report names the bad lines, the preview shows the chat template
    page2 = wizard.data_page
    page2.path.setText(str(data))
    page2.check()
    qtbot.waitUntil(lambda: page2.result is not None, timeout=120_000)
    issues = [page2.issues.item(i).text() for i in range(page2.issues.count())]
    assert [i.split(":")[0] for i in issues] == ["line 3", "line 6"] and "unknown role 'robot'" in issues[1]
    assert "8 of 10 rows usable" in page2.summary.text()
    assert "<|im_start|>assistant" in page2.preview.toPlainText()
    assert page2.isComplete()
    page2.stop.setChecked(True)
    assert not page2.isComplete()  # stopping on bad rows: this file cannot go on
    page2.skip.setChecked(True)
    wizard.next()

    # 3. settings: the planner's values with reasons; a tiny run for the test
    settings = wizard.settings_page
    assert settings.editors["rank"].value() == 16 and settings.editors["rank"].toolTip()
    assert "Memory estimate" in settings.memory.text()
    settings.editors["rank"].setValue(4)
    settings.editors["seq_length"].setValue(64)
    settings.editors["batch_size"].setValue(2)
    settings.max_steps.setValue(2)
    settings.output.setText(str(tmp_path / "run"))
    wizard.next()

    # 4. training: live loss on the chart, then done with the measured peak memory
    train = wizard.train_page
    qtbot.waitUntil(lambda: train.result is not None or "failed" in train.status.text().lower(), timeout=240_000)
    assert train.result is not None, train.status.text()
    assert train.result["steps"] == 2
    assert len(train.chart.series["training loss"][0]) == 2
    assert "Peak memory" in train.figures.text() and "estimated" in train.figures.text()
    wizard.next()

    # 5. export: GGUF Q8_0 into the library, then "Chat with it" names it
    export = wizard.export_page
    export.qtype.setCurrentText("Q8_0")
    qtbot.mouseClick(export.export_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: export.chat_button.isEnabled() or "failed" in export.status.text(), timeout=240_000)
    assert export.chat_button.isEnabled(), export.status.text()
    gguf = Path(wizard.export_result["gguf"])
    assert gguf.is_file() and gguf.parent == tmp_path / "home" / "data" / "models" / "finetuned"
    with qtbot.waitSignal(page.sig_load_requested, timeout=5_000) as asked:
        qtbot.mouseClick(export.chat_button, Qt.MouseButton.LeftButton)
    assert asked.args == [wizard.export_result["model_id"]]
    qtbot.waitUntil(lambda: base.combo.count() >= 1, timeout=60_000)  # listed when the page opened
    assert "SmolLM2" in base.combo.itemText(0)
