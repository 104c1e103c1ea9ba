"""POST /v1/chat/completions, /v1/completions and /v1/embeddings, relayed to the model's upstream (docs/api.md)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..protocol.llm import CHAT_REQUEST, COMPLETION_REQUEST, EMBEDDINGS_REQUEST, RELAYED_RESPONSES
from ..services.llm import LlmProxy
from .deps import LlmDep, cancellable_body, until_disconnected
from .middleware import MODEL_HEADER, at_request_end
from .streaming import stream_headers

router = APIRouter(tags=["llm"], responses=RELAYED_RESPONSES)


async def _relay(endpoint: str, request: Request, llm: LlmProxy) -> StreamingResponse:
    body = await request.body()
    answer = await until_disconnected(request, llm.relay(endpoint, body))
    at_request_end(request.scope, answer.aclose)
    headers = {**answer.headers, MODEL_HEADER: answer.card.id}
    if answer.is_event_stream:
        headers = stream_headers(headers)
    # The upstream's content type as it sent it (a media_type here would gain a charset).
    return StreamingResponse(cancellable_body(request, answer.body), status_code=answer.status_code, headers=headers)


@router.post("/v1/chat/completions", response_class=StreamingResponse, openapi_extra=CHAT_REQUEST)
async def chat_completions(request: Request, llm: LlmDep) -> StreamingResponse:
    return await _relay("chat/completions", request, llm)


@router.post("/v1/completions", response_class=StreamingResponse, openapi_extra=COMPLETION_REQUEST)
async def completions(request: Request, llm: LlmDep) -> StreamingResponse:
    return await _relay("completions", request, llm)


@router.post("/v1/embeddings", response_class=StreamingResponse, openapi_extra=EMBEDDINGS_REQUEST)
async def embeddings(request: Request, llm: LlmDep) -> StreamingResponse:
    return await _relay("embeddings", request, llm)
