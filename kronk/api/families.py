"""The endpoint families, registered in one place: each family's HTTP routes and, for the model endpoints, the
handler a model's service runs its calls with. A new family (messages, responses, ollama, ...) is one package
beside these and one entry here."""

from __future__ import annotations

from fastapi import APIRouter

from kronk.api import wire
from kronk.api.chat.routes import router as chat_router
from kronk.api.chat.serving import serve_chat
from kronk.api.completions.routes import router as completions_router
from kronk.api.completions.serving import serve_completion
from kronk.api.embeddings.routes import router as embeddings_router
from kronk.api.embeddings.serving import serve_embeddings
from kronk.api.messages.routes import PREFIX as MESSAGES_PREFIX
from kronk.api.messages.routes import WIRE as MESSAGES_WIRE
from kronk.api.messages.routes import router as messages_router
from kronk.api.messages.serving import serve_count_tokens, serve_messages
from kronk.api.models.routes import router as models_router
from kronk.api.ollama.routes import WIRE as OLLAMA_WIRE
from kronk.api.ollama.routes import router as ollama_router
from kronk.api.ollama.serving import serve_ollama_chat, serve_ollama_embed, serve_ollama_generate
from kronk.api.rerank.routes import router as rerank_router
from kronk.api.rerank.serving import serve_rerank
from kronk.api.responses.routes import router as responses_router
from kronk.api.responses.serving import serve_responses
from kronk.api.tokenize.routes import router as tokenize_router
from kronk.api.tokenize.serving import serve_apply_template, serve_detokenize, serve_tokenize
from kronk.serving.call import Endpoint
from kronk.serving.service import Handler

# Route order matters where paths overlap: models' /v1/models/pull comes before /v1/models/{id} in its router.
ROUTERS: list[APIRouter] = [models_router, chat_router, completions_router, embeddings_router, ollama_router,
                            responses_router, rerank_router, tokenize_router,
                            messages_router]

HANDLERS: dict[Endpoint, Handler] = {
    Endpoint.CHAT: serve_chat,
    Endpoint.COMPLETIONS: serve_completion,
    Endpoint.EMBEDDINGS: serve_embeddings,
    Endpoint.MESSAGES: serve_messages,
    Endpoint.MESSAGES_COUNT_TOKENS: serve_count_tokens,
    Endpoint.OLLAMA_CHAT: serve_ollama_chat,
    Endpoint.OLLAMA_GENERATE: serve_ollama_generate,
    Endpoint.OLLAMA_EMBED: serve_ollama_embed,
    Endpoint.RESPONSES: serve_responses,
    Endpoint.RERANK: serve_rerank,
    Endpoint.TOKENIZE: serve_tokenize,
    Endpoint.DETOKENIZE: serve_detokenize,
    Endpoint.APPLY_TEMPLATE: serve_apply_template,
}

wire.register(MESSAGES_PREFIX, MESSAGES_WIRE)  # Anthropic's error shape on /v1/messages*
wire.register("/api/", OLLAMA_WIRE)  # Ollama's {"error": "..."} and NDJSON on /api/*
