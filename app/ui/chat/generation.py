"""Per-conversation generation settings and system-prompt presets (Qt-free).

A conversation's settings blob holds the sampling fields of `protocol.Sampling` plus
`context_length` (0 = let the planner choose). Presets are system prompts: a few built in, the
user's own saved as JSON in the config folder, so they survive a reinstall of the app.
"""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

from app.paths import paths
from app.runtime.protocol import RuntimeFailure, Sampling

log = logging.getLogger(__name__)

SAMPLING_KEYS = tuple(f.name for f in fields(Sampling))
CONTEXT_KEY = "context_length"

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


def settings_blob(sampling: Sampling, context_length: int = 0) -> dict[str, Any]:
    """What is stored in the conversation: every sampling field and the context length."""
    blob = sampling.to_dict()
    blob[CONTEXT_KEY] = int(context_length)
    return blob


def presets_file() -> Path:
    return paths().config / "chat_presets.json"


def load_presets(path: Path | None = None) -> dict[str, str]:
    """Built-in presets followed by the user's; a damaged file is logged and ignored."""
    presets = dict(BUILTIN_PRESETS)
    path = path or presets_file()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return presets
    except (OSError, ValueError) as exc:
        log.warning("cannot read the presets file %s: %s", path, exc)
        return presets
    if isinstance(data, dict):
        presets.update({str(k): str(v) for k, v in data.items() if isinstance(v, str)})
    return presets


def save_preset(name: str, prompt: str, path: Path | None = None) -> None:
    """Add or replace a user preset (built-in names are kept as they are)."""
    path = path or presets_file()
    user = {k: v for k, v in load_presets(path).items() if k not in BUILTIN_PRESETS}
    user[name] = prompt
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(user, ensure_ascii=False, indent=2), encoding="utf-8")
    tmp.replace(path)
