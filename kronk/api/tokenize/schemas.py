"""Requests of ``/v1/tokenize``, ``/v1/detokenize`` and ``/v1/apply-template`` (and llama-server's paths)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from kronk.api.chat.schemas import ChatCompletionRequest
from kronk.api.limits import DEFAULT_LIMITS, check_count, limits_of
from kronk.api.schemas import ModelRequest


class TokenBudget(ModelRequest):
    """The server's max_embedding_tokens, when validated: the most tokens one of these requests answers with."""

    _token_budget: int = PrivateAttr(default=DEFAULT_LIMITS.max_embedding_tokens)

    @model_validator(mode="after")
    def _budget(self, info: ValidationInfo) -> TokenBudget:
        self._token_budget = limits_of(info).max_embedding_tokens
        return self

    @property
    def token_budget(self) -> int:
        return self._token_budget


class TokenizeRequest(TokenBudget):
    """Text to tokenize: ``prompt`` (vLLM) or ``content`` (llama-server). Special tokens (BOS) are added as the
    model adds them when ``add_special`` (llama-server's name) or ``add_special_tokens`` (vLLM's) says so, by
    default as each server does: yes with ``prompt``, no with ``content``."""

    prompt: str | None = None
    content: str | None = None
    add_special: bool | None = None
    add_special_tokens: bool | None = None
    parse_special: bool = Field(default=True, description="Read special-token text (<|im_start|>) as the token.")
    with_pieces: bool = Field(default=False, description="Answer tokens as {id, piece} (llama-server).")

    @model_validator(mode="after")
    def _one_text(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.content is None):
            raise ValueError("send the text to tokenize as exactly one of prompt or content (or send messages)")
        if None not in (self.add_special, self.add_special_tokens) and self.add_special != self.add_special_tokens:
            raise ValueError("add_special and add_special_tokens disagree; send one of them")
        return self

    @property
    def text(self) -> str:
        return self.prompt if self.prompt is not None else self.content  # type: ignore[return-value]

    @property
    def special(self) -> bool:
        for v in (self.add_special, self.add_special_tokens):
            if v is not None:
                return v
        return self.prompt is not None


class ApplyTemplateRequest(ChatCompletionRequest):
    """A chat request, rendered as chat completions renders it (every field that shapes the prompt: messages,
    tools, tool_choice, chat_template_kwargs, reasoning_effort, enable_thinking, response_format); the sampling
    fields are validated as there and ignored. The prompt ends with the assistant's turn opened, or with
    ``continue_final_message`` at the end of the last (assistant) message's content, as chat completions renders
    a prefill."""

    add_generation_prompt: bool = Field(default=True, description="Only true, or false with "
                                        "continue_final_message: chat completions opens the assistant's turn or "
                                        "continues the last one.")

    @model_validator(mode="after")
    def _generation_prompt(self) -> ApplyTemplateRequest:
        if not self.add_generation_prompt and not self.continue_final_message:
            raise ValueError("the prompt is rendered as chat completions renders it: the assistant's turn opened, "
                             "or the last assistant message continued (continue_final_message); "
                             "add_generation_prompt false alone is not supported")
        return self


class TokenizeChatRequest(ApplyTemplateRequest, TokenBudget):
    """``messages`` to tokenize: the tokens chat completions prefills (add_special / parse_special do not apply:
    the template places the special tokens)."""

    with_pieces: bool = Field(default=False, description="Answer tokens as {id, piece} (llama-server).")


class DetokenizeRequest(TokenBudget):
    tokens: list[int]

    @field_validator("tokens", mode="before")
    @classmethod
    def _tokens_count(cls, v: Any, info: ValidationInfo) -> Any:
        check_count(v, limits_of(info).max_embedding_tokens, "tokens", "max_embedding_tokens")
        return v
