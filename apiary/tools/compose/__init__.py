"""docker-compose.yml, proven without a Docker engine: its services run as local processes.

`apiary demo --compose docker-compose.yml` reads the compose file (see
:mod:`apiary.tools.compose.spec`), checks it against the CLI (:mod:`apiary.tools.compose.check`) and
runs every enabled service's own ``command`` with its own ``environment``, so the commands
and variables a hospital deploys are exactly the ones tested. What a container gets from
Docker is mapped onto one machine (:mod:`apiary.tools.compose.mapping`):

* **Commands.** ``apiary …`` runs as ``python -m apiary.cli …`` of this interpreter,
  ``python …`` as this interpreter. Each service runs in its own root directory (its
  working directory) with the compose environment over the current one *minus every
  ``APIARY_*`` variable*, so no setting leaks in from the shell.
* **Host names → loopback ports.** Every (service, container port) the file declares —
  in ``expose`` or ``ports`` — gets its own free port on 127.0.0.1. Then, in every
  environment value of every service:

  - ``<service>:<port>``, alone, in a URL or in a list (``cleveland:50051``,
    ``http://devnet:8545``, ``a=cleveland:50051,b=hungary:50051``) becomes
    ``127.0.0.1:<mapped port>``; a port the service does not declare is an error;
  - a service's own ``*_PORT`` variable (``APIARY_API_PORT=8000``) becomes its mapped
    port, so it listens where the others look for it; a ``*_HOST`` of ``0.0.0.0``
    becomes ``127.0.0.1``;
  - in a service's healthcheck, ``127.0.0.1:<port>`` / ``localhost:<port>`` become its
    mapped port, and the healthcheck command itself is run.

  Published host ports (``127.0.0.1:8001:8000``) are not bound: two runs can share a machine.
* **Volumes → directories.** Each named volume is ``<run>/volumes/<name>``; a bind mount is
  its host path. In the service's root, each mount target is a symlink to that directory,
  and every environment value that is an absolute path at, below or above a mount target
  gets the root prefixed (``/state`` in ``cleveland`` → ``<run>/roots/cleveland/state`` →
  ``<run>/volumes/cleveland-state``). ``:ro`` is not enforced. Every run starts on empty
  volumes, as a fresh Docker host would.
* **Order.** ``depends_on`` conditions are honoured: ``service_started``,
  ``service_completed_successfully`` (exit 0 before any dependent starts) and
  ``service_healthy`` (its healthcheck passes). Profiles enable services as in compose.
  ``up`` returns once every service with a healthcheck is healthy; everything is stopped
  (SIGTERM to each process group, SIGKILL after 20 s) at the end.
"""
