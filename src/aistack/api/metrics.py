"""GET /metrics: Prometheus' text format (docs/metrics.md); an admin key is needed when keys are set,
unless `security.public_metrics`."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..observability.metrics import GatewayMetrics

router = APIRouter(tags=["health"])


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    gathered: GatewayMetrics = request.app.state.metrics
    return Response(gathered.exposition(), media_type=CONTENT_TYPE_LATEST)
