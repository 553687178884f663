"""Anthropic's Messages API (``/v1/messages``, ``/v1/messages/count_tokens``): schemas (requests, mapped onto a
chat request), routes (HTTP, Anthropic's error shape), serving (in the replica: one chat turn as Anthropic's
message or its event stream)."""
