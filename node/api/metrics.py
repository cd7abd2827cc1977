"""Prometheus metrics (``/metrics``, open to scrapers): the node's :class:`NodeMetrics`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from apiary.node.api.deps import History
from apiary.node.metrics import NodeMetrics
from apiary.node.ports import NodeView

router = APIRouter(tags=["node"])


def metrics_for(name: str, history: History, node: NodeView) -> NodeMetrics:
    """Metrics of an app made without the node's own (what it saved, and its chain)."""
    return NodeMetrics(name, history=history.snapshot, link=lambda: node.link)


def get_metrics(request: Request) -> NodeMetrics:
    metrics: NodeMetrics = request.app.state.metrics
    return metrics


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}},
                             "description": "Prometheus text format"}})
def metrics(node_metrics: Annotated[NodeMetrics, Depends(get_metrics)]) -> Response:
    """Prometheus text format: counters and histograms of what happened since the node
    started, the model it holds, its chain's view (omitted, with ``apiary_chain_up 0``,
    while the chain does not answer) and the process's own metrics."""
    return Response(node_metrics.render(), media_type=CONTENT_TYPE_LATEST)
