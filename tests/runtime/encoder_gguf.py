"""A tiny GGUF with an embedding model's metadata, for tests of the library and the Models page."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_encoder_gguf(path: Path, *, arch: str = "bert", pooling: int | None = 2) -> Path:
    """A tiny GGUF with an encoder's metadata (its one tensor is enough for the library, not to run)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(512)
    writer.add_embedding_length(8)
    if pooling is not None:
        writer.add_pooling_type(gguf.PoolingType(pooling))
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
