"""Token ids as llama-server shows them: each token's piece with special tokens as their text (``<|im_start|>``),
so that the pieces of a tokenization join to the text it came from; ids checked against the vocabulary."""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp

from kronk.engine.model import LlamaModel
from kronk.errors import InvalidRequest, Unsupported


def llama_model_of(engine: Any) -> LlamaModel:
    """The llama.cpp model behind an engine (an engine without one cannot tokenize for a client)."""
    model = getattr(engine, "model", None)
    if not isinstance(model, LlamaModel):
        raise Unsupported("this model's engine has no llama.cpp vocabulary to tokenize with", param="model")
    return model


def piece(model: LlamaModel, token: int) -> bytes:
    """The bytes of one token, special tokens rendered as their text (llama-server's common_token_to_piece)."""
    buf = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(model.vocab, token, buf, len(buf), 0, True)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(model.vocab, token, buf, len(buf), 0, True)
    return buf.raw[:n]


def check_ids(model: LlamaModel, tokens: list[int], param: str = "tokens") -> None:
    for i, t in enumerate(tokens):
        if not 0 <= t < model.n_vocab:
            raise InvalidRequest(f"{param}[{i}] = {t} is not a token id of this model (0 to {model.n_vocab - 1})",
                                 param=param)


def detokenize(model: LlamaModel, tokens: list[int]) -> str:
    """The text of ``tokens`` with special tokens as their text (bytes that are no UTF-8 become U+FFFD)."""
    check_ids(model, tokens)
    return b"".join(piece(model, t) for t in tokens).decode("utf-8", errors="replace")
