"""`engine.embed`: vectors from a second llama.cpp context, beside the chat's and never instead of
it; the library marks embedding models from their GGUF metadata, and a chat model is never the
default embedder (SmolLM2 is named explicitly here, and mean-pooled)."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.runtime import library
from app.runtime.inprocess import InProcessClient
from app.runtime.jobs import JobContext
from app.runtime.protocol import ErrorKind, Method, RuntimeFailure
from app.runtime.services import Services
from app.runtime.services.embed import EmbedParams, EmbedService

_spec = importlib.util.spec_from_file_location("encoder_gguf", Path(__file__).with_name("encoder_gguf.py"))  # shared with the Models page test
assert _spec is not None and _spec.loader is not None
encoder_gguf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(encoder_gguf)
write_encoder_gguf = encoder_gguf.write_encoder_gguf


def test_the_library_marks_embedding_models_from_their_metadata(tmp_path: Path, model_path: Path) -> None:
    assert library.read_gguf(model_path, source="embedded").embedding is False  # a chat model
    assert library.read_gguf(write_encoder_gguf(tmp_path / "bge.gguf"), source="folder").embedding is True
    assert library.read_gguf(write_encoder_gguf(tmp_path / "nomic.gguf", arch="nomic-bert", pooling=None), source="folder").embedding
    # a decoder converted as an embedder says so with its pooling type; a reranker (RANK) is not an embedder
    assert library.read_gguf(write_encoder_gguf(tmp_path / "qwen3-embed.gguf", arch="qwen3", pooling=3), source="folder").embedding
    assert not library.read_gguf(write_encoder_gguf(tmp_path / "rerank.gguf", arch="qwen3", pooling=4), source="folder").embedding
    assert library.scan([tmp_path], hf_cache=False)[0].to_dict()["embedding"] is False


def test_a_chat_model_is_never_the_default_embedder(tmp_path: Path) -> None:
    only_chat = EmbedService(models=lambda: library.scan([], hf_cache=False))
    with pytest.raises(RuntimeFailure) as info:
        only_chat.embed(EmbedParams(input=["hello"]), JobContext.detached())
    assert info.value.kind is ErrorKind.MODEL_NOT_FOUND and "no embedding model" in info.value.message
    write_encoder_gguf(tmp_path / "bge-small.gguf")
    with_encoder = EmbedService(models=lambda: library.scan([tmp_path], hf_cache=False))
    assert with_encoder.choose(None).name == "bge-small"
    assert with_encoder.choose(library.EMBEDDED_ID).id == library.EMBEDDED_ID  # named explicitly: allowed


@pytest.fixture
def runtime() -> Iterator[tuple[InProcessClient, Services]]:
    services = Services(warm_up=False)
    client = InProcessClient(services)
    yield client, services
    client.close()


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_embeddings_come_from_a_context_of_their_own_and_leave_the_chat_untouched(runtime: tuple[InProcessClient, Services]) -> None:
    client, services = runtime
    client.call(Method.CHAT, {"messages": [{"role": "user", "content": "Name a colour."}], "sampling": {"max_tokens": 4}}, timeout=120)
    chat_backend = services.engine.backend
    assert chat_backend is not None
    held = chat_backend.held_tokens()
    texts = ["The cat sat on the mat.", "A cat was sitting on a rug.", "Interest rates rose by half a percent."]
    got = client.call(Method.ENGINE_EMBED, {"model": library.EMBEDDED_ID, "input": texts}, timeout=120)
    assert got["model"] == library.EMBEDDED_ID and got["dimensions"] == 576 and got["tokens"] > len(texts)
    vectors = got["embeddings"]
    assert len(vectors) == 3 and all(len(v) == 576 and math.isclose(_cos(v, v), 1.0, rel_tol=1e-5) for v in vectors)
    assert _cos(vectors[0], vectors[1]) > _cos(vectors[0], vectors[2])  # the two cats are nearer than the rates
    alone = client.call(Method.ENGINE_EMBED, {"model": library.EMBEDDED_ID, "input": [texts[2]]}, timeout=60)["embeddings"][0]
    assert np.allclose(alone, vectors[2], atol=1e-4)  # batching does not change a vector
    # the studio's model and its cached conversation were not touched
    assert services.engine.backend is chat_backend and chat_backend.held_tokens() == held
    assert services.embed.loaded == str(library.embedded_model_path())
    client.call(Method.ENGINE_UNLOAD, timeout=60)
    assert services.embed.loaded is None and services.engine.backend is None


def test_an_input_longer_than_the_context_is_refused_not_cut(runtime: tuple[InProcessClient, Services]) -> None:
    client, _ = runtime
    with pytest.raises(RuntimeFailure) as info:
        client.call(Method.ENGINE_EMBED, {"model": library.EMBEDDED_ID, "input": ["short", "word " * 2100]}, timeout=60)
    assert info.value.kind is ErrorKind.INVALID_PARAMS and "Input 1 has" in info.value.message
