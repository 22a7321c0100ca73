"""Other GGUF types of the embedded SmolLM2 for speculation tests: the F16 and Q4_K_M files that
llama.cpp's own quantizer makes from the Q4_1 one (requantized, so same vocabulary, bigger or
differently rounded weights). Made once per test session, in a child process as the quantize
wizard does (`app.runtime.quantize.child.quantize`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.runtime.quantize.child import quantize
from app.runtime.quantize import targets


@pytest.fixture(scope="session")
def requantized(model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """``requantized("F16")``: the path of the embedded model converted to that GGUF type."""
    folder = tmp_path_factory.mktemp("requantized")
    made: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in made:
            out = folder / f"SmolLM2-135M-Instruct.{name}.gguf"
            rc = quantize(str(model_path), str(out), targets.get(name).ftype, max(os.cpu_count() or 1, 1), None, True)
            assert rc == 0 and out.stat().st_size > 0, f"llama.cpp could not make the {name} copy"
            made[name] = out
        return made[name]

    return make
