"""`apiary node`: run one hospital node until its last round or a signal."""

from __future__ import annotations

import logging
import signal
import sys

from apiary.core.admin_token import require_admin_token
from apiary.core.settings import NodeSettings
from apiary.node.runtime import NodeRuntime


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("web3", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_node(settings: NodeSettings) -> None:
    require_admin_token(settings.admin_token, what=f"node {settings.name}'s admin API")
    configure_logging()
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
