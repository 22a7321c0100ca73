"""Settings on disk: wrong types are not trusted, unreadable files move aside, secrets stay private."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest

from app import settings
from app.chats import ChatStore, Role
from app.settings import Settings


def write(path: Path, raw: object) -> Path:
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("field", "bad"), [
    ("model_dirs", "/x"), ("model_dirs", [5]), ("model_dirs", None), ("model_dirs", {"a": 1}),
    ("server_port", "8080"), ("server_port", 70000), ("server_port", True), ("server_port", 80.5),
    ("n_threads", 0), ("n_threads", "4"), ("context_length", 16), ("theme", "neon"), ("theme", None),
    ("first_run_done", "yes"), ("server_host", ""), ("server_host", 127), ("server_cors_origins", "http://a"),
    ("server_queue_limit", -1), ("server_max_tokens", None), ("model_backends", ["torch"]),
    ("remote_endpoints", "http://lab"), ("remote_endpoints", [{"name": 1, "url": "http://x"}]),
    ("remote_endpoints", [None]), ("server_api_key", 12345678), ("default_model", 3), ("default_backend", None),
])
def test_a_field_of_the_wrong_type_or_range_falls_back_to_its_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, field: str, bad: object
) -> None:
    path = write(tmp_path / "settings.json", {"schema_version": 2, "server_port": 9000, "theme": "dark", field: bad})
    with caplog.at_level(logging.WARNING, logger="app.settings"):
        loaded = settings.load(path)
    assert getattr(loaded, field) == getattr(Settings(), field)
    assert f"settings: {field} must" in caplog.text
    # the other fields are kept, and the file is not moved aside for one bad field
    others = {"server_port": 9000, "theme": "dark"}
    assert all(getattr(loaded, k) == v for k, v in others.items() if k != field)
    assert path.exists() and not list(tmp_path.glob("*.unreadable-*"))


def test_a_string_is_never_walked_as_a_list_of_folders(tmp_path: Path) -> None:
    loaded = settings.load(write(tmp_path / "settings.json", {"schema_version": 2, "model_dirs": "/x"}))
    assert loaded.model_dirs == []


@pytest.mark.parametrize("raw", [{"schema_version": 0}, {"schema_version": -3}, {"schema_version": "2"},
                                 {"schema_version": None}, [1, 2], "text", None, 5])
def test_a_file_that_cannot_be_understood_is_moved_aside(tmp_path: Path, raw: object) -> None:
    path = write(tmp_path / "settings.json", raw)
    assert settings.load(path) == Settings()
    assert not path.exists()
    (aside,) = tmp_path.glob("settings.json.unreadable-*")
    assert json.loads(aside.read_text(encoding="utf-8")) == raw
    assert mode(aside) == 0o600


def test_a_newer_file_keeps_its_unknown_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "settings.json", {"schema_version": 2, "future_thing": {"a": 1}, "server_port": 9001})
    loaded = settings.load(path)
    assert loaded.server_port == 9001 and loaded.extra == {"future_thing": {"a": 1}}
    settings.save(loaded, path)
    assert json.loads(path.read_text(encoding="utf-8"))["future_thing"] == {"a": 1}


def test_the_file_is_written_private_and_a_loose_mode_is_fixed_on_save(tmp_path: Path) -> None:
    path = tmp_path / "config" / "settings.json"
    settings.save(Settings(server_api_key="a-long-secret"), path)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700  # a folder Hearth creates is private too
    path.chmod(0o644)  # as older Hearths wrote it
    path.with_name("settings.json.tmp").write_text("stale")
    path.with_name("settings.json.tmp").chmod(0o666)
    settings.save(settings.load(path), path)
    assert mode(path) == 0o600
    assert settings.load(path).server_api_key == "a-long-secret"


def test_keys_never_show_in_the_repr_or_the_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = Settings(server_api_key="sk-server-secret", remote_endpoints=[{"name": "lab", "url": "http://x", "api_key": "sk-remote"}])
    assert "sk-server-secret" not in repr(s) and "sk-remote" not in repr(s) and "lab" in repr(s)
    path = write(tmp_path / "settings.json", {"schema_version": 2, "server_api_key": ["sk-in-a-list"]})
    with caplog.at_level(logging.WARNING, logger="app.settings"):
        settings.load(path)
    assert "server_api_key" in caplog.text and "sk-in-a-list" not in caplog.text


def test_a_conversation_export_carries_no_key(tmp_path: Path) -> None:
    with ChatStore(tmp_path / "chats.sqlite3") as store:
        conv = store.create_conversation(settings={"temperature": 0.3, "api_key": "sk-in-settings"})
        store.add_message(conv.id, Role.ASSISTANT, "hi", meta={"remote": {"Authorization": "Bearer sk-x"}, "tokens": 3})
        exported = store.export_json(conv.id)
    assert "sk-in-settings" not in exported and "sk-x" not in exported
    doc = json.loads(exported)
    assert doc["settings"] == {"temperature": 0.3} and doc["messages"][0]["meta"] == {"remote": {}, "tokens": 3}


def test_a_remote_endpoint_key_is_never_in_its_repr_or_its_errors() -> None:
    from app.runtime.backends.remote import Endpoint
    from app.runtime.protocol import RuntimeFailure

    endpoint = Endpoint.from_dict({"name": "lab", "url": "http://127.0.0.1:9/v1", "api_key": "sk-very-secret"})
    assert endpoint.api_key == "sk-very-secret" and "sk-very-secret" not in repr(endpoint)
    try:
        Endpoint.from_dict({"name": "lab/1", "url": "http://127.0.0.1:9", "api_key": "sk-very-secret"})
    except RuntimeFailure as exc:
        assert "sk-very-secret" not in exc.message and "lab/1" in exc.message
    else:
        raise AssertionError("a name with '/' must be refused")
