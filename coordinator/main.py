"""`apiary coordinator`: run the federated-mode coordinator until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import signal
import threading

from apiary.coordinator.metrics import MetricsServer, serve_metrics
from apiary.coordinator.server import serve
from apiary.core.logs import configure_logging
from apiary.core.settings import CoordinatorSettings

log = logging.getLogger("apiary.coordinator")

STOP_GRACE_S = 2.0


def run_coordinator(settings: CoordinatorSettings) -> None:
    configure_logging(settings.log_level, settings.log_format)
    service, server, port = serve(settings)
    rounds = service.rounds
    exporter: MetricsServer | None = None
    if settings.coordinator_metrics_port:
        try:
            exporter = serve_metrics(service.metrics, settings.coordinator_host,
                                     settings.coordinator_metrics_port)
        except Exception:
            rounds.stop()
            server.stop(0)
            raise
        log.info("coordinator metrics on http://%s:%d/metrics", settings.coordinator_host,
                 exporter.port)
    names = [service.members.name(a) for a in rounds.members]
    print(
        f"coordinator listening on {settings.coordinator_host}:{port} (mutual TLS with the "
        f"members of swarm {service.members.contract_address}; public HE context only): "
        f"{len(names)} members ({', '.join(names)}), {service.param_count} parameters, "
        f"min_peers {rounds.min_peers}, round deadline {rounds.round_deadline_s:g} s, "
        f"at round {rounds.current_round} (state in {settings.coordinator_state}); "
        "Ctrl-C to stop",
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        rounds.stop()
        server.stop(STOP_GRACE_S).wait()
        if exporter is not None:
            exporter.stop()
    log.info("coordinator stopped at round %d", rounds.current_round)
