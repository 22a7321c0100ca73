from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.runtime.hf_folder import MARKER, hf_folder_for_gguf
from app.runtime.protocol import ErrorKind, RuntimeFailure


def test_the_folder_is_a_loadable_model_and_is_reused(smollm2_hf: Path, model_path: Path) -> None:
    config = json.loads((smollm2_hf / "config.json").read_text())
    assert config["num_hidden_layers"] == 30 and config["model_type"] == "llama"
    assert (smollm2_hf / "model.safetensors").stat().st_size > 400_000_000  # fp32, 135M parameters
    assert (smollm2_hf / "tokenizer.json").is_file()
    assert (smollm2_hf / MARKER).read_text().strip() == str(model_path.resolve())
    # A second call finds the finished folder instead of converting again.
    assert hf_folder_for_gguf(model_path, cache=smollm2_hf.parent) == smollm2_hf


def test_a_file_that_is_not_a_model_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeFailure) as caught:
        hf_folder_for_gguf(bogus, cache=cache)
    assert caught.value.kind in (ErrorKind.MODEL_INVALID,)
    assert "notes.gguf" in caught.value.message
    assert list(cache.iterdir()) == []
