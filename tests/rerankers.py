"""A real reranker GGUF for the tests, built at test time from SmolLM2 (no reranker ships on PyPI; no hub).

llama.cpp loads a rank head (``cls.output.weight``) for BERT-style architectures and for ``qwen3``, not for
``llama`` (SmolLM2's: its loader then counts one tensor too many). So the copy is a ``qwen3`` model: SmolLM2's
weights unchanged, Qwen3's per-head query/key norms added as ones, ``qwen3.pooling_type = 4`` (RANK), two output
labels (``yes``, ``no``: llama.cpp's Qwen3 reranker head is a softmax over them) and ``cls.output.weight`` set to a
given [2, n_embd] matrix. llama.cpp then runs real rank pooling on it: the score of a pair is
``softmax(head @ h)[0]`` where ``h`` is the normed hidden state of the pair's last token, which the tests compute
independently from a twin GGUF (same weights, ``pooling_type = 3``, LAST, no head) through the embeddings path.

The GGUF is rewritten at the byte level (header, key/values, tensor infos, then the original tensor data
untouched, then the new tensors): gguf's GGUFReader takes about 6 s to parse SmolLM2's 49k-token vocabulary,
this takes well under one.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from tests.models import smollm_path

N_EMBD = 576  # SmolLM2-135M
N_LAYERS = 30
HEAD_DIM = 64
ALIGN = 32
# A rerank template (tokenizer.chat_template.rerank) in Qwen3-Reranker's shape, in SmolLM2's ChatML tokens, without
# Qwen3's system and instruction lines (fewer tokens to compute per pair)
RERANK_TEMPLATE = "<|im_start|>user\n<Query>: {query}\n<Document>: {document}<|im_end|>\n<|im_start|>assistant\n"

_FIXED = {GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.UINT16: 2, GGUFValueType.INT16: 2,
          GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4, GGUFValueType.FLOAT32: 4, GGUFValueType.BOOL: 1,
          GGUFValueType.UINT64: 8, GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8}


def _skip_value(buf: memoryview, off: int, vtype: int) -> int:
    if vtype in _FIXED:
        return off + _FIXED[vtype]
    if vtype == GGUFValueType.STRING:
        (n,) = struct.unpack_from("<Q", buf, off)
        return off + 8 + n
    if vtype == GGUFValueType.ARRAY:
        sub, count = struct.unpack_from("<IQ", buf, off)
        off += 12
        if sub in _FIXED:
            return off + count * _FIXED[sub]
        for _ in range(count):
            off = _skip_value(buf, off, sub)
        return off
    raise ValueError(f"unknown GGUF value type {vtype}")


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, vtype: GGUFValueType, value: object) -> bytes:
    out = _str(key) + struct.pack("<I", vtype)
    if vtype == GGUFValueType.STRING:
        return out + _str(str(value))
    if vtype == GGUFValueType.UINT32:
        return out + struct.pack("<I", value)
    if vtype == GGUFValueType.BOOL:
        return out + struct.pack("<?", value)
    if vtype == GGUFValueType.ARRAY:  # of strings
        items = list(value)  # type: ignore[call-overload]
        return out + struct.pack("<IQ", GGUFValueType.STRING, len(items)) + b"".join(_str(s) for s in items)
    raise ValueError(vtype)


def _pad(n: int) -> int:
    return (ALIGN - n % ALIGN) % ALIGN


def build(out: Path, *, pooling: int, head: np.ndarray | None = None, template: str | None = None,
          vocab_flags: dict[str, object] | None = None) -> Path:
    """SmolLM2 as a ``qwen3`` GGUF at ``out``, with ``pooling`` (4: RANK, 3: LAST), a rank head ``head``
    ([2, n_embd] float32: the yes/no rows) and the rerank ``template``; ``vocab_flags`` override tokenizer keys
    (``add_bos_token``, ``add_eos_token``, ``add_sep_token``: bool; ``seperator_token_id``: int, gguf's spelling)."""
    src = Path(smollm_path())
    flags = {f"tokenizer.ggml.{k}": v for k, v in (vocab_flags or {}).items()}
    raw = src.read_bytes()
    with memoryview(raw) as buf:
        magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", buf, 0)
        assert magic == b"GGUF" and version == 3
        off = 24
        kvs: list[bytes] = []
        for _ in range(n_kv):
            (klen,) = struct.unpack_from("<Q", buf, off)
            key = bytes(buf[off + 8: off + 8 + klen]).decode()
            (vtype,) = struct.unpack_from("<I", buf, off + 8 + klen)
            end = _skip_value(buf, off + 12 + klen, vtype)
            if key == "general.architecture":
                kvs.append(_kv(key, GGUFValueType.STRING, "qwen3"))
            elif key == "general.alignment":
                raise AssertionError("SmolLM2's GGUF has the default alignment")
            elif key not in flags:
                if key.startswith("llama."):
                    key = "qwen3." + key.removeprefix("llama.")
                kvs.append(_str(key) + bytes(buf[off + 8 + klen: end]))
            off = end
        kvs.append(_kv("qwen3.pooling_type", GGUFValueType.UINT32, pooling))
        for key, v in flags.items():
            kvs.append(_kv(key, GGUFValueType.BOOL if isinstance(v, bool) else GGUFValueType.UINT32, v))
        if template is not None:
            kvs.append(_kv("tokenizer.chat_template.rerank", GGUFValueType.STRING, template))
        infos_start = off
        for _ in range(n_tensors):
            (nlen,) = struct.unpack_from("<Q", buf, off)
            (n_dims,) = struct.unpack_from("<I", buf, off + 8 + nlen)
            off += 8 + nlen + 4 + 8 * n_dims + 4 + 8
        infos = bytes(buf[infos_start:off])
        data_start = off + _pad(off)
        data = buf[data_start:]
        extra: list[tuple[str, np.ndarray]] = [
            (f"blk.{i}.attn_{qk}_norm.weight", np.ones(HEAD_DIM, dtype=np.float32))
            for i in range(N_LAYERS) for qk in ("q", "k")]
        if head is not None:
            kvs.append(_kv("qwen3.classifier.output_labels", GGUFValueType.ARRAY, ["yes", "no"]))
            extra.append(("cls.output.weight", np.ascontiguousarray(head, dtype=np.float32)))
        at = len(data) + _pad(len(data))
        new_infos, blobs = [], []
        for name, a in extra:
            dims = list(reversed(a.shape))  # GGUF lists ne0 (the fastest) first
            new_infos.append(_str(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims,
                                                      GGMLQuantizationType.F32, at))
            blobs.append((at, a.tobytes()))
            at += a.nbytes + _pad(a.nbytes)
        head_bytes = (struct.pack("<4sIQQ", b"GGUF", 3, n_tensors + len(extra), len(kvs)) + b"".join(kvs)
                      + infos + b"".join(new_infos))
        with out.open("wb") as w:
            w.write(head_bytes + b"\0" * _pad(len(head_bytes)))
            w.write(data)
            pos = len(data)
            for at, blob in blobs:
                w.write(b"\0" * (at - pos) + blob)
                pos = at + len(blob)
    return out
