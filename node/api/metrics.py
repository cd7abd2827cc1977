"""Prometheus metrics (``/metrics``, open to scrapers)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from apiary.node.api.deps import HistoryDep, SettingsDep

router = APIRouter(tags=["node"])


class NodeMetrics:
    """The gauges of one node, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["node"]
        self.round = Gauge("apiary_round", "last round whose global model this node holds",
                           labels, registry=self.registry)
        self.accuracy = Gauge("apiary_accuracy",
                              "global model accuracy on this node's test split", labels,
                              registry=self.registry)
        self.heldout_accuracy = Gauge("apiary_heldout_accuracy",
                                      "global model accuracy on the held-out set", labels,
                                      registry=self.registry)
        self.rounds = Gauge("apiary_rounds_completed", "rounds whose model this node adopted",
                            labels, registry=self.registry)
        self.rejected = Gauge("apiary_rounds_rejected",
                              "rounds whose aggregate failed the model check (model kept)",
                              labels, registry=self.registry)
        self.phase_seconds = Gauge("apiary_phase_seconds",
                                   "seconds of each phase in the last round", ["node", "phase"],
                                   registry=self.registry)

    def render(self, node: str, snapshot: dict[str, Any]) -> str:
        """The Prometheus text format, after setting the gauges from a state snapshot."""
        self.round.labels(node).set(snapshot["round"])
        history = snapshot["history"]
        rejected = sum(1 for r in history if r.get("status") == "rejected")
        self.rounds.labels(node).set(len(history) - rejected)
        self.rejected.labels(node).set(rejected)
        adopted = [r for r in history if r.get("status", "adopted") == "adopted"]
        if adopted:
            last = adopted[-1]
            self.accuracy.labels(node).set(last["accuracy"] or 0.0)
            if last["heldout_accuracy"] is not None:
                self.heldout_accuracy.labels(node).set(last["heldout_accuracy"])
            for phase, seconds in last["seconds"].items():
                self.phase_seconds.labels(node, phase).set(seconds)
        return generate_latest(self.registry).decode()


def get_metrics(request: Request) -> NodeMetrics:
    metrics: NodeMetrics = request.app.state.metrics
    return metrics


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(settings: SettingsDep, history: HistoryDep,
            gauges: Annotated[NodeMetrics, Depends(get_metrics)]) -> str:
    """Prometheus text format."""
    return gauges.render(settings.name, history.snapshot())
