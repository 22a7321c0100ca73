"""/v1/embeddings with the official openai client: float and base64, one input or many, usage; the
vectors come from a context of their own, so the served chat model stays loaded as it was."""

from __future__ import annotations

import base64
import struct

import httpx
import numpy as np
import openai
import pytest

from .conftest import Served


@pytest.fixture
def oai(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.v1, api_key="unused", max_retries=0, timeout=120)


def test_embeddings_in_float_and_base64(served: Served, oai: openai.OpenAI) -> None:
    texts = ["The cat sat on the mat.", "A cat was sitting on a rug.", "Interest rates rose by half a percent."]
    as_float = oai.embeddings.create(model=served.model, input=texts, encoding_format="float")
    assert [d.index for d in as_float.data] == [0, 1, 2] and as_float.model == served.model
    vectors = np.array([d.embedding for d in as_float.data])
    assert vectors.shape == (3, 576) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]  # the two cats are nearer than the rates
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens > len(texts)
    one = oai.embeddings.create(model=served.model, input=texts[0])  # the client asks for base64 and decodes it itself
    assert len(one.data) == 1 and np.allclose(one.data[0].embedding, vectors[0], atol=1e-6)
    raw = httpx.post(f"{served.v1}/embeddings", json={"model": served.model, "input": texts[1], "encoding_format": "base64"}, timeout=120).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    assert np.allclose(struct.unpack(f"<{len(packed) // 4}f", packed), vectors[1], atol=1e-6)
    status = served.client.call("engine.status")
    assert status["loaded"] and status["model"]["id"] == served.model  # the chat model was not replaced


def test_embedding_requests_that_cannot_be_served_get_400_or_404(served: Served, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        oai.embeddings.create(model="no-such-model", input="hello")
    for bad, param in (([], "input"), ([""], "input"), ([[1, 2]], "input")):
        with pytest.raises(openai.BadRequestError) as info:
            oai.embeddings.create(model=served.model, input=bad, encoding_format="float")
        assert info.value.body["param"] == param  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as dims:
        oai.embeddings.create(model=served.model, input="hello", dimensions=64)
    assert "576 dimensions" in dims.value.body["message"]  # type: ignore[index]
