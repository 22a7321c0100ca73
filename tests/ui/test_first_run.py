"""First run: the welcome shows this computer and the plan from the real worker, once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from app import settings
from app.runtime.planner import load_profile
from app.ui.bridge import RuntimeBridge
from app.ui.main_window import MainWindow
from app.ui.welcome.page import bigger_model_hint, hardware_lines


@pytest.fixture
def fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path))  # a first start: no settings file (the worker inherits it)
    return tmp_path


@pytest.fixture
def first_window(qtbot, fresh_home: Path) -> Iterator[MainWindow]:  # type: ignore[no-untyped-def]
    bridge = RuntimeBridge()
    win = MainWindow(bridge, first_run=not settings.load().first_run_done)
    qtbot.addWidget(win)
    win.show()
    with qtbot.waitSignal(bridge.sig_ready, timeout=60_000):
        bridge.start()
    yield win
    bridge.close()
    win.chat_page.store.close()


def test_the_welcome_shows_hardware_plan_and_a_ready_model(qtbot, first_window: MainWindow) -> None:  # type: ignore[no-untyped-def]
    win, welcome = first_window, first_window.welcome_page
    assert win.pages.currentWidget() is welcome and win.sidebar.currentRow() == -1
    qtbot.waitUntil(lambda: welcome.plan is not None and welcome.hardware is not None, timeout=60_000)
    assert "Memory:" in welcome.hardware_label.text() and "cores" in welcome.hardware_label.text()
    assert welcome.plan is not None and welcome.plan["summary"] in welcome.plan_label.text()
    assert "Q4_1" in welcome.plan_label.text()
    assert welcome.plan["plan"]["gpu_layers"]["reason"] in welcome.plan_label.text()  # the why, not just the what
    assert "SmolLM2" in welcome.model_label.text()
    assert "billion parameters" in welcome.bigger_label.text() or "small models" in welcome.bigger_label.text()
    assert settings.load().first_run_done is True  # shown once: the next start opens on the chat

    qtbot.mouseClick(welcome.download_button, Qt.MouseButton.LeftButton)
    assert win.pages.currentWidget() is win.models_page
    assert win.models_page.tabs.currentWidget() is win.models_page.hub_panel
    win.show_welcome()
    qtbot.mouseClick(welcome.start_button, Qt.MouseButton.LeftButton)
    assert win.pages.currentWidget() is win.chat_page and win.sidebar.currentRow() == 0


def test_a_second_start_opens_on_the_chat(qtbot, fresh_home: Path) -> None:  # type: ignore[no-untyped-def]
    saved = settings.load()
    saved.first_run_done = True
    settings.save(saved)
    win = MainWindow(RuntimeBridge(), first_run=not settings.load().first_run_done)  # no worker needed
    qtbot.addWidget(win)
    win.show()
    assert win.pages.currentWidget() is win.chat_page and not win.welcome_page.isVisible()
    win.chat_page.store.close()


def test_sidebar_pages_keep_their_rows(qtbot, fresh_home: Path) -> None:  # type: ignore[no-untyped-def]
    from PySide6.QtWidgets import QLabel

    win = MainWindow(RuntimeBridge())
    qtbot.addWidget(win)
    extra = win.add_page("Extra", QLabel("extra"), icon="server")  # what the lead adds for a new page
    titles = [win.sidebar.item(i).text() for i in range(win.sidebar.count())]
    assert titles == ["Chat", "Models", "Quantize", "Fine-tune", "Server", "Settings", "Extra"]
    assert all(not win.sidebar.item(i).icon().isNull() for i in range(len(titles)))
    win.sidebar.setCurrentRow(6)
    assert win.pages.currentWidget() is extra
    win.sidebar.setCurrentRow(5)
    assert win.pages.currentWidget() is win.settings_page
    for row, page in enumerate((win.chat_page, win.models_page, win.quantize_page, win.finetune_page, win.server_page)):
        win.sidebar.setCurrentRow(row)
        assert win.pages.currentWidget() is page
    win.chat_page.store.close()


def test_the_size_hint_follows_memory_and_bandwidth() -> None:
    cpu = load_profile("cpu-16gb").to_dict()
    gpu = load_profile("rtx3060-12gb").to_dict()
    lines = hardware_lines(gpu)
    assert any("GPU:" in line and "12.0 GiB" in line for line in lines)
    assert "No GPU found" in " ".join(hardware_lines(cpu))
    gpu_hint = bigger_model_hint(gpu, None)
    assert "video memory" in gpu_hint
    # 12 GiB of VRAM at 80%: about 16 billion parameters at 4.85 bits.
    assert "16 billion" in gpu_hint or "15 billion" in gpu_hint or "17 billion" in gpu_hint, gpu_hint
    slow = dict(cpu, ram_bandwidth=8e9)  # a slow laptop: speed, not size, is the limit
    assert float(bigger_model_hint(slow, None).split("about ")[1].split(" ")[0]) < float(
        bigger_model_hint(dict(cpu, ram_bandwidth=80e9), None).split("about ")[1].split(" ")[0])
