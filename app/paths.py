"""Where Hearth keeps its files: platformdirs locations, never the install folder.

`HEARTH_HOME` puts every location under one folder (tests, portable installs); without it the
platform's own config, data, cache and log folders are used.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from app import APP_NAME


@dataclass(frozen=True)
class Paths:
    config: Path
    data: Path
    cache: Path
    logs: Path

    @property
    def settings_file(self) -> Path:
        return self.config / "settings.json"

    @property
    def models(self) -> Path:
        """The folder Hearth downloads and imports models into."""
        return self.data / "models"

    @property
    def chats_db(self) -> Path:
        return self.data / "chats.sqlite3"

    def ensure(self) -> Paths:
        for folder in (self.config, self.data, self.cache, self.logs, self.models):
            folder.mkdir(parents=True, exist_ok=True)
        return self


def paths() -> Paths:
    """The current locations, read from the environment each call (tests change HEARTH_HOME)."""
    home = os.environ.get("HEARTH_HOME")
    if home:
        root = Path(home)
        return Paths(root / "config", root / "data", root / "cache", root / "logs")
    return Paths(
        config=Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)),
        data=Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)),
        cache=Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False)),
        logs=Path(platformdirs.user_log_dir(APP_NAME, appauthor=False)),
    )


RESOURCES_ENV = "HEARTH_RESOURCES"


def resource_folders() -> list[Path]:
    """Where resources/ (icons, style, texts) may be, in order: HEARTH_RESOURCES, the frozen
    bundle, then the source tree. Both the studio and the runtime look here."""
    found: list[Path] = []
    if os.environ.get(RESOURCES_ENV):
        found.append(Path(os.environ[RESOURCES_ENV]))
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        found.append(Path(bundle) / "resources")
    found.append(Path(__file__).resolve().parents[1] / "resources")
    return found
