"""The quantize wizard, offscreen, with the real worker: from the first page to "Chat with it".

A real run with one cheap target (Q8_0 from the session's F16 GGUF of SmolLM2, measured on a few
hundred tokens), in a private HEARTH_HOME so that its result does not join other tests' library.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QWizard

from app.ui.bridge import RuntimeBridge
from app.ui.wizards.quantize import QuantizePage


def _fixture_module() -> Any:
    if "quantize_fixture" not in sys.modules:
        path = Path(__file__).parents[1] / "runtime" / "quantize" / "quantize_fixture.py"
        spec = importlib.util.spec_from_file_location("quantize_fixture", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["quantize_fixture"] = module
        spec.loader.exec_module(module)
    return sys.modules["quantize_fixture"]


@pytest.fixture
def library_home(tmp_path: Path, smollm2_hf: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    f16 = _fixture_module().f16_gguf(smollm2_hf)
    home = tmp_path / "home"
    models = home / "data" / "models"
    models.mkdir(parents=True)
    os.symlink(f16, models / f16.name)  # the library lists it; nothing copies 270 MB
    monkeypatch.setenv("HEARTH_HOME", str(home))  # the worker started below inherits it
    return models


@pytest.fixture
def bridge(qtbot: Any, library_home: Path) -> Iterator[RuntimeBridge]:
    bridge = RuntimeBridge()
    with qtbot.waitSignal(bridge.sig_ready, timeout=60_000):
        bridge.start()
    yield bridge
    bridge.close()


@pytest.mark.slow
def test_wizard_first_page_to_chat(qtbot: Any, bridge: RuntimeBridge, library_home: Path) -> None:
    page = QuantizePage(bridge)
    qtbot.addWidget(page)
    page.show()
    qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
    wizard = page.wizard
    assert wizard is not None and wizard.isVisible()
    wizard.eval_tokens = 300  # one window: enough to fill the table, quick enough for a test

    # 1. pick the F16 model from the library
    pick = wizard.pick_page
    qtbot.waitUntil(lambda: pick.models.rowCount() >= 2, timeout=30_000)
    assert not pick.isComplete()
    f16_path = str(library_home / "SmolLM2-135M-Instruct.F16.gguf")
    assert pick.select_model(f16_path)
    assert pick.isComplete()
    wizard.next()

    # 2. the planner's recommendation is offered; choose Q8_0 alone instead
    targets = wizard.targets_page
    qtbot.waitUntil(lambda: targets.list.count() > 0, timeout=30_000)
    assert targets.recommended.isEnabled() and "Recommended for this computer: " in targets.recommended.text()
    assert targets.reason.text()

    def item(name: str) -> Any:
        return next(targets.list.item(i) for i in range(targets.list.count()) if targets.list.item(i).data(Qt.ItemDataRole.UserRole) == name)

    names = [targets.list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(targets.list.count())]
    assert len(names) == len(set(names))  # each type listed once
    # the importance matrix is on by default: said per type, and the types that need one are offered
    assert targets.imatrix.isChecked() and "importance matrix" in item("Q4_K_M").text() and "importance matrix" not in item("Q8_0").text()
    assert item("IQ2_XS").flags() & Qt.ItemFlag.ItemIsEnabled
    targets.imatrix.setChecked(False)  # asks again: without one, IQ2_XS cannot be made
    qtbot.waitUntil(lambda: targets.list.count() > 0, timeout=30_000)
    assert not item("IQ2_XS").flags() & Qt.ItemFlag.ItemIsEnabled and "importance matrix" not in item("Q4_K_M").text()
    targets.imatrix.setChecked(True)
    qtbot.waitUntil(lambda: targets.list.count() > 0, timeout=30_000)
    targets.check(["Q8_0"])
    assert targets.chosen() == ["Q8_0"] and targets.isComplete()
    wizard.next()

    # 3. the run: per-step and per-tensor progress, then done
    run = wizard.run_page
    assert wizard.currentPage() is run and not run.isComplete()
    qtbot.waitUntil(lambda: run.done or bool(run.error), timeout=240_000)
    assert run.done, run.error
    assert wizard.button(QWizard.WizardButton.NextButton).isEnabled()
    wizard.next()

    # 4. results: the source and Q8_0 side by side, the recommended one highlighted, a chart
    results = wizard.results_page
    rows = results.results.rows()
    assert [r["target"] for r in rows] == ["F16 (source)", "Q8_0"]
    assert results.results.data(results.results.index(1, 1)) == "plain" and rows[1]["imatrix"] is False  # Q8_0: no importance matrix
    best = results.results.recommended_row()
    assert best == 1 and results.results.data(results.results.index(1, 0), Qt.ItemDataRole.BackgroundRole) is not None
    assert rows[1]["kl_mean"] > 0 and abs(rows[1]["ppl_change_pct"]) < 5
    assert results.chart.labels == ["F16 (source)", "Q8_0"] and results.chart.highlight == 1
    assert (library_home / "SmolLM2-135M-Instruct.Q8_0.gguf").is_file()
    with qtbot.waitSignal(page.sig_load_requested, timeout=5_000) as asked:
        qtbot.mouseClick(results.chat_button, Qt.MouseButton.LeftButton)
    assert asked.args == ["smollm2-135m-instruct-q8_0"]


def test_charts_draw_bars_and_growing_lines(qtbot: Any) -> None:
    from app.ui.widgets.charts import BarChart, LineChart

    bars = BarChart("Size")
    qtbot.addWidget(bars)
    bars.set_data(["F16", "Q8_0", "Q4_K_M"], [270.0, 145.0, 100.0], highlight=2, unit="MB")
    items = [i for i in bars.plot.getPlotItem().items if i.__class__.__name__ == "BarGraphItem"]
    assert len(items) == 1 and bars.highlight == 2
    bars.set_data([], [])  # an empty report clears the chart instead of failing
    assert not [i for i in bars.plot.getPlotItem().items if i.__class__.__name__ == "BarGraphItem"]
    lines = LineChart("Loss", x_label="step", y_label="loss")
    qtbot.addWidget(lines)
    for step, loss in enumerate([2.5, 2.1, 1.9]):
        lines.append("train", step, loss)
    lines.set_series("eval", [0, 2], [2.6, 2.0])
    assert lines.series["train"] == ([0.0, 1.0, 2.0], [2.5, 2.1, 1.9])
    assert len(lines._curves) == 2
