"""The node's admin API (FastAPI): health and readiness, its public identity and the
founding ceremony, status, round history, model, membership and Prometheus metrics.

``/v1/health``, ``/v1/ready``, ``/v1/identity`` and ``/metrics`` are open (for load
balancers, scrapers and whoever founds a swarm), and ``POST /v1/members`` is authorised by
its single-use invite; everything else needs ``Authorization: Bearer <admin token>``.
"""

from apiary.node.api.app import create_app

__all__ = ["create_app"]
