"""Per-conversation generation settings and system-prompt presets (Qt-free).

A conversation's settings blob holds the sampling fields of `protocol.Sampling` plus
`context_length` (0 = let the planner choose), `context_policy` (what to do when the conversation
outgrows the context) and `chat_template` (an override of the model's; "" = the model's). Presets
are system prompts: a few built in, the user's own saved as JSON in the config folder, so they
survive a reinstall of the app. That file also keeps the app-wide `idle_unload_minutes`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

from app.paths import paths
from app.runtime.protocol import CONTEXT_POLICIES, RuntimeFailure, Sampling

log = logging.getLogger(__name__)

SAMPLING_KEYS = tuple(f.name for f in fields(Sampling))
CONTEXT_KEY = "context_length"
POLICY_KEY = "context_policy"
TEMPLATE_KEY = "chat_template"
IDLE_KEY = "idle_unload_minutes"  # app-wide, in the presets file; 0 = never unload
IDLE_CHOICES = (0, 5, 15, 60)
CONTEXT_POLICY_LABELS: dict[str, str] = {
    "rolling_window": "Rolling window: forget the oldest messages",
    "truncate_middle": "Truncate middle: keep the first message",
    "stop_at_limit": "Stop at the limit",
}
assert tuple(CONTEXT_POLICY_LABELS) == CONTEXT_POLICIES  # one label per policy the runtime knows

BUILTIN_PRESETS: dict[str, str] = {
    "Default": "",
    "Helpful assistant": "You are a helpful, concise assistant. Answer clearly and say when you are not sure.",
    "Coder": "You are an expert programmer. Answer with short explanations and complete code in fenced code blocks.",
    "Translator": "You translate the user's text. Reply only with the translation, keeping the meaning and tone.",
    "Pirate": "You are a friendly pirate. Always answer in pirate speech.",
}


def sampling_from(settings: dict[str, Any] | None) -> Sampling:
    """The Sampling a conversation's settings ask for; bad or unknown values fall back to defaults."""
    raw = {k: v for k, v in (settings or {}).items() if k in SAMPLING_KEYS}
    try:
        return Sampling.from_dict(raw)
    except RuntimeFailure as exc:
        log.warning("ignoring invalid stored generation settings %s: %s", raw, exc.message)
        return Sampling()


def context_length_from(settings: dict[str, Any] | None) -> int:
    value = (settings or {}).get(CONTEXT_KEY, 0)
    return value if isinstance(value, int) and value > 0 else 0


def context_policy_from(settings: dict[str, Any] | None) -> str:
    value = (settings or {}).get(POLICY_KEY)
    return value if value in CONTEXT_POLICIES else CONTEXT_POLICIES[0]


def chat_template_from(settings: dict[str, Any] | None) -> str:
    """The conversation's template override, or "" for the model's own."""
    value = (settings or {}).get(TEMPLATE_KEY)
    return value if isinstance(value, str) and value.strip() else ""


def settings_blob(sampling: Sampling, context_length: int = 0, *, base: dict[str, Any] | None = None,
                  context_policy: str | None = None, chat_template: str | None = None) -> dict[str, Any]:
    """What is stored in the conversation: every sampling field, the context length, the context
    policy and the template override (those two taken from `base` unless given)."""
    blob = sampling.to_dict()
    blob[CONTEXT_KEY] = int(context_length)
    blob[POLICY_KEY] = context_policy if context_policy in CONTEXT_POLICIES else context_policy_from(base)
    blob[TEMPLATE_KEY] = chat_template.strip() if chat_template is not None else chat_template_from(base)
    return blob


def presets_file() -> Path:
    return paths().config / "chat_presets.json"


def _read(path: Path) -> dict[str, Any]:
    """The presets file as stored ({} when missing; a damaged file is logged and ignored)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("cannot read the presets file %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    tmp.replace(path)


def load_presets(path: Path | None = None) -> dict[str, str]:
    """Built-in presets followed by the user's (the file's string values)."""
    presets = dict(BUILTIN_PRESETS)
    presets.update({str(k): v for k, v in _read(path or presets_file()).items() if isinstance(v, str)})
    return presets


def save_preset(name: str, prompt: str, path: Path | None = None) -> None:
    """Add or replace a user preset (built-in names are kept as they are; other settings are kept)."""
    path = path or presets_file()
    data = {k: v for k, v in _read(path).items() if k not in BUILTIN_PRESETS}
    data[name] = prompt
    _write(path, data)


def delete_preset(name: str, path: Path | None = None) -> bool:
    """Remove a user preset; built-in presets cannot be removed. True when one was removed."""
    if name in BUILTIN_PRESETS:
        raise ValueError(f"{name!r} is a built-in preset; only your own presets can be deleted")
    path = path or presets_file()
    data = _read(path)
    if not isinstance(data.get(name), str):
        return False
    del data[name]
    _write(path, data)
    return True


def idle_unload_minutes(path: Path | None = None) -> int:
    """After how many idle minutes the chat page unloads the model (0 = never, the default)."""
    value = _read(path or presets_file()).get(IDLE_KEY, 0)
    return value if value in IDLE_CHOICES and not isinstance(value, bool) else 0


def save_idle_unload_minutes(minutes: int, path: Path | None = None) -> None:
    if minutes not in IDLE_CHOICES:
        raise ValueError(f"idle unload must be one of {IDLE_CHOICES} minutes, not {minutes!r}")
    path = path or presets_file()
    data = _read(path)
    data[IDLE_KEY] = int(minutes)
    _write(path, data)
