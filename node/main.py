"""`apiary node`: run one hospital node until its last round or a signal."""

from __future__ import annotations

import logging
import signal

from apiary.core.admin_token import require_admin_token
from apiary.core.listening import check_can_listen
from apiary.core.logs import configure_logging
from apiary.core.settings import NodeSettings
from apiary.node.runtime import NodeRuntime


def run_node(settings: NodeSettings) -> None:
    require_admin_token(settings.admin_token, what=f"node {settings.name}'s admin API")
    configure_logging(settings.log_level, settings.log_format, node=settings.name)
    check_can_listen(settings.api_host, settings.api_port,
                     "another node running? choose a port with --api-port or APIARY_API_PORT")
    if settings.mode == "swarm":
        check_can_listen(settings.grpc_host, settings.grpc_port, "another node running? "
                         "choose a port with --grpc-port or APIARY_GRPC_PORT")
    log = logging.getLogger("apiary.node")
    runtime = NodeRuntime.create(settings)
    runtime.start_api()
    log.info("node=%s mode=%s admin API http://%s:%d/docs, peer gRPC %s", settings.name,
             settings.mode, settings.api_host, settings.api_port, settings.endpoint)

    def stop(signum: int, _frame: object) -> None:
        log.info("node=%s received signal %d; stopping after the current step",
                 settings.name, signum)
        runtime.stop_event.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        runtime.run()
    except KeyboardInterrupt:
        pass
    finally:
        runtime.shutdown()
    log.info("node=%s stopped at round %d", settings.name, runtime.state.round)
