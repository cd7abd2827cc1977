"""Can this process listen on a port? Asked before a service starts, so a port in use is
one clear line instead of a server library's own error from a thread."""

from __future__ import annotations

import socket

from apiary.core.errors import ConfigError


def check_can_listen(host: str, port: int, hint: str) -> None:
    """ConfigError ``cannot listen on HOST:PORT: <reason> (<hint>)`` when the port is taken
    or not allowed; port 0 (any free port) always passes."""
    if port == 0:
        return
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                          f"({hint})") from None
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                              f"({hint})") from None
