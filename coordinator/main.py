"""`apiary coordinator`: run the federated-mode coordinator until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import signal
import sys
import threading

from apiary.coordinator.server import service_from_settings, start_server
from apiary.core.settings import CoordinatorSettings

log = logging.getLogger("apiary.coordinator")

STOP_GRACE_S = 2.0


def run_coordinator(settings: CoordinatorSettings) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    service = service_from_settings(settings)
    server, port = start_server(service, settings.coordinator_host, settings.coordinator_port)
    rounds = service.rounds
    print(
        f"coordinator listening on {settings.coordinator_host}:{port} "
        f"(public HE context only): {len(rounds.members)} members ({', '.join(rounds.members)}), "
        f"{service.param_count} parameters, min_peers {rounds.min_peers}, "
        f"round deadline {rounds.round_deadline_s:g} s; Ctrl-C to stop",
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
    log.info("coordinator stopped at round %d", rounds.current_round)
