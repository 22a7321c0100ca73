"""The library reads real GGUF metadata and refuses damaged files in words."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app.runtime import library
from app.runtime.protocol import ErrorKind, RuntimeFailure


def test_embedded_model_metadata(model_path: Path) -> None:
    info = library.read_gguf(model_path, source="embedded")
    assert (info.architecture, info.n_layers, info.n_embd, info.n_head_kv, info.head_dim) == ("llama", 30, 576, 3, 64)
    assert info.vocab_size == 49152 and info.context_length == 8192 and info.quantization == "Q4_1"
    assert 130e6 < info.parameters < 140e6 and info.has_chat_template


def test_scan_finds_the_embedded_model_and_folder_models(tmp_path: Path, model_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    shutil.copy(model_path, tmp_path / "sub" / "copy.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a model")
    models = library.scan([tmp_path], hf_cache=False)
    assert [m.source for m in models] == ["embedded", "folder"]
    assert models[0].name == library.EMBEDDED_NAME and models[1].name == "copy"
    assert library.resolve(None, models).source == "embedded"
    assert library.resolve("copy", models).path.endswith("copy.gguf")
    assert library.resolve(str(tmp_path / "sub" / "copy.gguf"), models).source == "folder"


def test_truncated_file_is_refused(tmp_path: Path, model_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    with model_path.open("rb") as src:
        cut.write_bytes(src.read(model_path.stat().st_size // 2))
    with pytest.raises(RuntimeFailure) as info:
        library.read_gguf(cut, source="folder")
    assert info.value.kind is ErrorKind.MODEL_INVALID and "truncated" in info.value.message


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 a zip file", b"GGUF" + b"\xff" * 40])
def test_foreign_or_garbage_files_are_refused(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    with pytest.raises(RuntimeFailure) as info:
        library.read_gguf(bad, source="folder")
    assert info.value.kind is ErrorKind.MODEL_INVALID and "bad.gguf" in info.value.message


def test_unknown_names_list_what_is_known() -> None:
    with pytest.raises(RuntimeFailure) as info:
        library.resolve("nope", library.scan([]))
    assert info.value.kind is ErrorKind.MODEL_NOT_FOUND and library.EMBEDDED_ID in info.value.message
