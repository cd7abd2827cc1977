"""The node's admin API (FastAPI): health and readiness, status, round history, model,
membership and Prometheus metrics.

``/v1/health``, ``/v1/ready`` and ``/metrics`` are open (for load balancers and scrapers),
and ``POST /v1/members`` is authorised by its single-use invite; everything else needs
``Authorization: Bearer <admin token>``.
"""

from apiary.node.api.app import create_app

__all__ = ["create_app"]
