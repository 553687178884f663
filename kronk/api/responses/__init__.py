"""OpenAI's Responses API (``/v1/responses``): one chat turn shaped as a response object or its named SSE events,
with the responses kept at the HTTP front (store.py) for ``previous_response_id``."""
