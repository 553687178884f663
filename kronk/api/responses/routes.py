"""``POST /v1/responses``, ``GET`` and ``DELETE /v1/responses/{id}``.

The route validates the request, resolves ``previous_response_id`` from the app's store (kronk/api/responses/
store.py) into the whole conversation, sends that as one call, and keeps the answer when ``store`` is true: a
non-streamed answer as it passes, a streamed one from its own ``response.completed`` (or ``response.incomplete``)
event. A failure in the middle of a stream becomes an ``error`` event and ``response.failed``, numbered on from
the stream's events. Errors before the first byte are OpenAI's envelope (the default wire).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from kronk.api.http import backend_of, check_model, context_of, limits_of, read_json, respond
from kronk.api.middleware import set_model
from kronk.api.responses.schemas import FunctionCallItem, MessageItem, ResponsesRequest
from kronk.api.responses.serving import event
from kronk.api.responses.store import Conversation, Owner, ResponseStore, owner_of, store_of
from kronk.api.schemas import json_body
from kronk.errors import InvalidRequest, Unsupported
from kronk.serving.call import Call, Endpoint
from kronk.serving.items import Failure, Item
from kronk.telemetry import tracing

router = APIRouter()

PREFIX = "/v1/responses"
TERMINAL = ("response.completed", "response.incomplete")


def conversation_items(output: list[dict[str, Any]]) -> list[Any]:
    """A response's output items as the input items a follow-up renders (reasoning is left out)."""
    items: list[Any] = []
    for o in output:
        if o.get("type") == "message":
            text = "".join(p.get("text", "") for p in o.get("content", ()) if p.get("type") == "output_text")
            items.append(MessageItem(role="assistant", content=text))
        elif o.get("type") == "function_call":
            items.append(FunctionCallItem(type="function_call", call_id=o["call_id"], name=o["name"],
                                          arguments=o["arguments"]))
    return items


def _event_data(item: str, kind: str) -> dict[str, Any] | None:
    """The data of the event ``kind`` in an SSE item (None: not in it)."""
    at = item.rfind(f"event: {kind}\ndata: ")
    if at < 0:
        return None
    start = at + len(f"event: {kind}\ndata: ")
    return json.loads(item[start:item.index("\n\n", start)])


def failed_events(f: Failure, shell: dict[str, Any] | None, seq: int) -> str:
    """A mid-stream failure: OpenAI's ``error`` event, then ``response.failed`` with the response."""
    code = "rate_limit_exceeded" if f.status == 429 else "server_error"
    response = {**(shell or {}), "status": "failed", "error": {"code": code, "message": f.message}}
    return (event("error", seq, {"code": f.code, "message": f.message, "param": f.param})
            + event("response.failed", seq + 1, {"response": response}))


async def _passed(items: AsyncIterator[Item], store: ResponseStore | None, owner: Owner,
                  conversation: Conversation) -> AsyncIterator[Item]:
    """The call's items as they go to the client: the finished response kept (``store``), a mid-stream
    failure written as this family's events."""
    seq, shell = 0, None
    try:
        async for item in items:
            if isinstance(item, dict):
                if store is not None:
                    _keep(store, owner, conversation, item)
            elif isinstance(item, str):
                if shell is None:
                    created = _event_data(item, "response.created")
                    shell = created["response"] if created else None
                seq += item.count("\n\n")  # one per event: the JSON of a data line holds no raw newline
                if store is not None:
                    for kind in TERMINAL:
                        final = _event_data(item, kind)
                        if final is not None:
                            _keep(store, owner, conversation, final["response"])
            elif seq:  # a Failure after the first event
                yield failed_events(item, shell, seq)
                return
            yield item
    finally:
        await items.aclose()  # type: ignore[attr-defined]


def _keep(store: ResponseStore, owner: Owner, conversation: Conversation, response: dict[str, Any]) -> None:
    answered = Conversation.of(conversation, conversation_items(response.get("output", [])))
    store.put(response["id"], owner, response, answered)


@router.post(PREFIX, openapi_extra=json_body(ResponsesRequest))
async def create_response(request: Request) -> Response:
    backend = backend_of(request)
    store = store_of(request)
    owner = owner_of(request)
    limits = limits_of(request)
    with tracing.span("kronk.route", attributes={"kronk.endpoint": Endpoint.RESPONSES.value}) as sp:
        body = await read_json(request)
        model = body.get("model")
        if isinstance(model, str) and model in await backend.model_ids():
            set_model(request, model)  # label this request's metrics, 4xx included, with a served model
        req = ResponsesRequest.model_validate(body, context={"limits": limits})
        await check_model(backend, req.model)
        previous = None
        if req.previous_response_id is not None:
            previous = store.get(req.previous_response_id, owner, param="previous_response_id").conversation
        conversation = Conversation.of(previous, req.input)
        if conversation.size > limits.max_messages:
            raise InvalidRequest(f"the conversation (the previous response's and this input) has {conversation.size} "
                                 f"items; at most {limits.max_messages} are allowed (the server's max_messages)",
                                 param="input")
        ctx = context_of(request)
        if store.taken("resp_" + ctx.request_id):  # a client's X-Request-ID that named a stored response already
            ctx = replace(ctx, request_id=uuid.uuid4().hex)
        if sp is not None:
            sp.set_attributes({"kronk.model": req.model, "kronk.stream": req.stream})
    call = Call(Endpoint.RESPONSES, req.with_input(conversation.resolve(), limits), ctx)
    items = _passed(backend.stream(call), store if req.store else None, owner, conversation)
    return await respond(items, request)


@router.get(PREFIX + "/{response_id}")
async def get_response(request: Request, response_id: str) -> Response:
    if request.query_params.get("stream", "").lower() in ("true", "1"):
        raise Unsupported("streaming a stored response again is not supported; retrieve it without stream",
                          param="stream")
    return JSONResponse(store_of(request).get(response_id, owner_of(request)).response)


@router.delete(PREFIX + "/{response_id}")
async def delete_response(request: Request, response_id: str) -> Response:
    store_of(request).delete(response_id, owner_of(request))
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})

