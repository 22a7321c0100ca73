"""The settings dialog: per conversation, a system-prompt preset, the generation settings and the
context policy; per model, which backend runs it (saved in the app settings' ``model_backends``,
which the worker reads for every load); app-wide, whether to unload the model when the chat is idle."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QMessageBox,
    QFormLayout,
    QHBoxLayout,
    QInputDialog,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from app import settings as app_settings
from app.runtime.protocol import Sampling
from app.ui.chat import generation

BACKEND_KEY = "backend"  # also kept in the conversation's settings blob
BACKEND_LABELS: dict[str, str] = {
    "auto": "Automatic (GGUF in llama.cpp, Hugging Face folders in torch)",
    "llama.cpp": "llama.cpp",
    "torch": "torch (transformers; a GGUF is dequantized)",
}
SPECULATE_KEY = "speculate"  # in the conversation's settings blob; sent as ChatParams.speculate ("" = the saved default)
SPECULATE_LABELS: dict[str, str] = {
    "": "Default (the app setting; automatic unless changed)",
    "auto": "Automatic (on where the measured costs say it pays)",
    "lookup": "Prompt lookup (guess from the conversation's own text)",
    "off": "Off",
}
KV_POLICY_KEY = "kv_policy"  # in the conversation's settings blob; sent as a planner preference
# The torch backend's KV cache (app/runtime/kv): "" = the planner's choice. llama.cpp ignores it.
KV_POLICY_LABELS: dict[str, str] = {
    "": "Automatic (full, or the best measured eviction policy when it does not fit)",
    "full": "Full cache (no eviction)",
    "sink_window": "Sinks + recent window (StreamingLLM)",
    "h2o": "Heavy hitters + recent window (H2O; costs explicit attention)",
    "snapkv": "Compress the prompt (SnapKV)",
    "keydiff": "Keep diverse keys (KeyDiff)",
    "int8_kv": "Keep everything, stored in int8",
}


class SettingsDialog(QDialog):
    def __init__(self, *, system_prompt: str, settings: dict[str, Any], parent: QWidget | None = None, model_id: str | None = None) -> None:
        super().__init__(parent)
        saved = app_settings.load()
        # the conversation's model: given, else the chat page's (the parent), else the person's default;
        # None (the embedded default model): the choice is saved as the default backend
        self.model_id: str | None = model_id or getattr(parent, "model", None) or saved.default_model
        self.setWindowTitle("Chat settings")
        self._settings = dict(settings)
        sampling = generation.sampling_from(settings)
        self.presets = generation.load_presets()
        self.preset = QComboBox(self)
        self.preset.addItems(list(self.presets))
        self.preset.setCurrentIndex(-1)
        self.preset.currentTextChanged.connect(lambda name: self.prompt.setPlainText(self.presets.get(name, "")))
        save = QPushButton("Save as preset…", self)
        save.clicked.connect(self._save_preset)
        self.delete_preset = QPushButton("Delete preset", self)
        self.delete_preset.setToolTip("Delete the chosen preset (your own; the built-in ones stay)")
        self.delete_preset.setEnabled(False)
        self.delete_preset.clicked.connect(self._delete_preset)
        self.preset.currentTextChanged.connect(lambda name: self.delete_preset.setEnabled(name not in generation.BUILTIN_PRESETS and name in self.presets))
        self.prompt = QPlainTextEdit(system_prompt, self)
        self.prompt.setFixedHeight(90)

        def spin(value: float, low: float, high: float, step: float, decimals: int = 2) -> QDoubleSpinBox:
            box = QDoubleSpinBox(self)
            box.setRange(low, high)
            box.setDecimals(decimals)
            box.setSingleStep(step)
            box.setValue(value)
            return box

        def ispin(value: int, low: int, high: int, special: str = "") -> QSpinBox:
            box = QSpinBox(self)
            box.setRange(low, high)
            box.setValue(value)
            if special:
                box.setSpecialValueText(special)
            return box

        self.temperature = spin(sampling.temperature, 0, 2, 0.05)
        self.top_p = spin(sampling.top_p, 0.01, 1, 0.05)
        self.top_k = ispin(sampling.top_k, 0, 1000, "off")
        self.min_p = spin(sampling.min_p, 0, 1, 0.01)
        self.repeat_penalty = spin(sampling.repeat_penalty, 0.5, 2, 0.05)
        self.max_tokens = ispin(sampling.max_tokens, 1, 32768)
        self.seed = ispin(-1 if sampling.seed is None else sampling.seed, -1, 2**31 - 1, "random")
        self.stop = QLineEdit(", ".join(sampling.stop), self)
        self.stop.setPlaceholderText("comma-separated, e.g. ###, User:")
        self.context = ispin(generation.context_length_from(settings), 0, 262144, "automatic")
        self.context.setSingleStep(1024)
        self.policy = QComboBox(self)
        for policy, label in generation.CONTEXT_POLICY_LABELS.items():
            self.policy.addItem(label, policy)
        self.policy.setCurrentIndex(self.policy.findData(generation.context_policy_from(settings)))
        self.policy.setToolTip("What happens when the conversation no longer fits in the model's memory")
        self.backend = QComboBox(self)
        for backend, label in BACKEND_LABELS.items():
            self.backend.addItem(label, backend)
        chosen = saved.model_backends.get(self.model_id) if self.model_id else saved.default_backend
        chosen = chosen or "auto"
        self.backend.setCurrentIndex(max(self.backend.findData(chosen), 0))
        self.backend.setToolTip("Which engine runs this model; the next message reloads it when this changes")
        self.kv_policy = QComboBox(self)
        for policy, label in KV_POLICY_LABELS.items():
            self.kv_policy.addItem(label, policy)
        self.kv_policy.setCurrentIndex(max(self.kv_policy.findData(str(settings.get(KV_POLICY_KEY) or "")), 0))
        self.kv_policy.setToolTip("torch backend only: how the KV cache is kept within its memory budget")
        self.speculate = QComboBox(self)
        for mode, label in SPECULATE_LABELS.items():
            self.speculate.addItem(label, mode)
        saved_mode = str(settings.get(SPECULATE_KEY) or "")
        if saved_mode and self.speculate.findData(saved_mode) < 0:  # draft:MODEL, set elsewhere: kept and shown
            self.speculate.addItem(f"Draft model {saved_mode[len('draft:'):]}", saved_mode)
        self.speculate.setCurrentIndex(max(self.speculate.findData(saved_mode), 0))
        self.speculate.setToolTip("Speculative decoding: guess several tokens cheaply and check them in one step of the model. "
                                  "The reply is the same; only its speed changes. Off while a tool or JSON grammar constrains it.")
        self.idle = QComboBox(self)
        for minutes in generation.IDLE_CHOICES:
            self.idle.addItem(f"After {minutes} minutes without a request" if minutes else "Never", minutes)
        self.idle.setCurrentIndex(self.idle.findData(generation.idle_unload_minutes()))
        self.idle.setToolTip("For every chat: free the model's memory when it has not been used for a while")

        presets = QHBoxLayout()
        presets.addWidget(self.preset, 1)
        presets.addWidget(save)
        presets.addWidget(self.delete_preset)
        form = QFormLayout(self)
        form.addRow("Preset", presets)
        form.addRow("System prompt", self.prompt)
        for label, box in (("Temperature", self.temperature), ("Top p", self.top_p), ("Top k", self.top_k),
                           ("Min p", self.min_p), ("Repeat penalty", self.repeat_penalty),
                           ("Max reply tokens", self.max_tokens), ("Seed", self.seed), ("Stop strings", self.stop),
                           ("Context length", self.context), ("When the context is full", self.policy),
                           ("Backend for this model", self.backend), ("KV cache (torch)", self.kv_policy),
                           ("Speculative decoding", self.speculate),
                           ("Unload the model", self.idle)):
            form.addRow(label, box)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def system_prompt(self) -> str:
        return self.prompt.toPlainText().strip()

    def settings(self) -> dict[str, Any]:
        stop = tuple(s.strip() for s in self.stop.text().split(",") if s.strip())
        sampling = Sampling(
            temperature=self.temperature.value(), top_p=self.top_p.value(), top_k=self.top_k.value(),
            min_p=self.min_p.value(), repeat_penalty=self.repeat_penalty.value(), max_tokens=self.max_tokens.value(),
            seed=None if self.seed.value() < 0 else self.seed.value(), stop=stop)
        blob = generation.settings_blob(sampling, self.context.value(), base=self._settings,
                                        context_policy=str(self.policy.currentData()))
        blob[BACKEND_KEY] = self.backend_choice()
        blob[KV_POLICY_KEY] = str(self.kv_policy.currentData()) or None
        blob[SPECULATE_KEY] = str(self.speculate.currentData()) or None
        return blob

    def backend_choice(self) -> str:
        return str(self.backend.currentData())

    def accept(self) -> None:
        """Save the model's backend choice in the app settings (absent = automatic), then close."""
        saved = app_settings.load()
        choice = self.backend_choice()
        if self.model_id is None:
            if saved.default_backend != choice:
                saved.default_backend = choice
                app_settings.save(saved)
        elif saved.model_backends.get(self.model_id, "auto") != choice:
            if choice == "auto":
                saved.model_backends.pop(self.model_id, None)
            else:
                saved.model_backends[self.model_id] = choice
            app_settings.save(saved)
        super().accept()

    def idle_minutes(self) -> int:
        """The app-wide idle-unload choice (0 = never); not part of the conversation's settings."""
        return int(self.idle.currentData())

    def _save_preset(self) -> None:
        name, ok = QInputDialog.getText(self, "Save preset", "Preset name:")
        if ok and name.strip():
            generation.save_preset(name.strip(), self.system_prompt())
            self._reload_presets(name.strip())

    def _delete_preset(self) -> None:
        """Delete the chosen user preset (asked first); the prompt in the box stays as it is."""
        name = self.preset.currentText()
        if name in generation.BUILTIN_PRESETS or name not in self.presets:
            return
        answer = QMessageBox.question(self, "Delete preset", f"Delete the preset “{name}”? The prompt stays in this conversation.")
        if answer == QMessageBox.StandardButton.Yes:
            generation.delete_preset(name)
            self._reload_presets(None)

    def _reload_presets(self, current: str | None) -> None:
        self.presets = generation.load_presets()
        self.preset.blockSignals(True)
        self.preset.clear()
        self.preset.addItems(list(self.presets))
        if current is None:
            self.preset.setCurrentIndex(-1)
        else:
            self.preset.setCurrentText(current)
        self.preset.blockSignals(False)
        self.delete_preset.setEnabled(current is not None and current not in generation.BUILTIN_PRESETS)
