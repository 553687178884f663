"""``/v1/embeddings`` shaping in one process (the real model, the in-process backend, real HTTP)."""

from __future__ import annotations

import base64
import struct

import pytest

from tests.helpers import GEMMA


def test_embeddings_shape_order_and_norm(client):
    r = client.embeddings.create(model=GEMMA, input=["the cat", "a rocket launch", "the cat"])
    vecs = [d.embedding for d in r.data]
    assert [d.index for d in r.data] == [0, 1, 2]
    assert len({len(v) for v in vecs}) == 1 and len(vecs[0]) > 100
    for v in vecs:
        assert abs(sum(x * x for x in v) - 1) < 1e-3
    assert vecs[0] == pytest.approx(vecs[2], abs=1e-5)
    assert vecs[0] != pytest.approx(vecs[1], abs=1e-2)
    assert r.usage.prompt_tokens > 0


def test_dimensions_and_base64(client):
    full = client.embeddings.create(model=GEMMA, input="the cat").data[0].embedding
    short = client.embeddings.create(model=GEMMA, input="the cat", dimensions=64).data[0].embedding
    assert len(short) == 64 and abs(sum(x * x for x in short) - 1) < 1e-3
    raw = client.embeddings.with_raw_response.create(model=GEMMA, input="the cat", encoding_format="base64")
    packed = base64.b64decode(raw.http_response.json()["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(full)}f", packed)) == pytest.approx(full, abs=1e-6)
