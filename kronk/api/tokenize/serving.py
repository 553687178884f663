"""Tokenize, detokenize and apply-template in the replica: the model's vocabulary and chat template, no generation
slot.

A chat prompt (``messages``) is rendered by chat completions' own preparation (kronk/api/chat/prompt.py:
``prepare_chat``): the prompt chat completions would prefill, tools and template arguments included, whatever that
preparation decides. A prompt longer than the model's context is still answered (``fit=False``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from kronk.api.chat.prompt import chat_size, prepare_chat
from kronk.api.tokenize.schemas import ApplyTemplateRequest, DetokenizeRequest, TokenizeChatRequest, TokenizeRequest
from kronk.errors import InvalidRequest
from kronk.serving.call import RequestContext
from kronk.serving.items import Item
from kronk.telemetry.generation import GenerationObserver

if TYPE_CHECKING:
    from kronk.serving.service import ModelService


def chat_prompt(svc: ModelService, req: ApplyTemplateRequest) -> tuple[str, list[int]]:
    """The text and tokens chat completions prefills for ``req``, even one the context cannot hold (blocking:
    run it off the event loop)."""
    prompt = prepare_chat(svc, req, fit=False)
    return prompt.text, prompt.tokens


def _pieces(svc: ModelService, tokens: list[int]) -> list[dict[str, Any]]:
    """llama-server's ``with_pieces``: each token's text, or its bytes where they are no whole UTF-8 text."""
    from kronk.engine.tokens import llama_model_of, piece  # in the replica (the ingress loads no llama.cpp)

    model = llama_model_of(svc.engine)
    out = []
    for t in tokens:
        b = piece(model, t)
        try:
            p: str | list[int] = b.decode("utf-8")
        except UnicodeDecodeError:
            p = list(b)
        out.append({"id": t, "piece": p})
    return out


def _tokenize_text(svc: ModelService, req: TokenizeRequest) -> list[int]:
    return svc.engine.tokenize(req.text, add_special=req.special, parse_special=req.parse_special)


def _detokenize(svc: ModelService, tokens: list[int]) -> str:
    from kronk.engine.tokens import detokenize, llama_model_of  # in the replica, as _pieces

    return detokenize(llama_model_of(svc.engine), tokens)


async def serve_tokenize(svc: ModelService, req: TokenizeRequest | TokenizeChatRequest, ctx: RequestContext,
                         obs: GenerationObserver) -> AsyncIterator[Item]:
    if isinstance(req, TokenizeChatRequest):
        _, tokens = await svc.prepare(chat_prompt, svc, req, size=chat_size(req))
        param = "messages"
    else:
        tokens = await svc.prepare(_tokenize_text, svc, req, size=len(req.text))
        param = "prompt" if req.prompt is not None else "content"
    if len(tokens) > req.token_budget:
        raise InvalidRequest(f"the {param} makes {len(tokens)} tokens; at most {req.token_budget} are answered for "
                             "one request (the server's max_embedding_tokens)", param=param)
    out: dict[str, Any] = {"tokens": _pieces(svc, tokens) if req.with_pieces else tokens, "count": len(tokens)}
    if svc.n_ctx:
        out["max_model_len"] = svc.n_ctx
    yield out


async def serve_detokenize(svc: ModelService, req: DetokenizeRequest, ctx: RequestContext,
                           obs: GenerationObserver) -> AsyncIterator[Item]:
    text = await svc.prepare(_detokenize, svc, req.tokens, size=len(req.tokens))
    yield {"content": text, "prompt": text}  # llama-server's key, vLLM's key


async def serve_apply_template(svc: ModelService, req: ApplyTemplateRequest, ctx: RequestContext,
                               obs: GenerationObserver) -> AsyncIterator[Item]:
    text, _ = await svc.prepare(chat_prompt, svc, req, size=chat_size(req))
    yield {"prompt": text}
