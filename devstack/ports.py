"""Free TCP ports for the embedded services (never the well-known 5432 / 1883)."""

from __future__ import annotations

import socket

__all__ = ["free_port", "port_accepts_connections"]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The kernel picks it from the ephemeral range, so it is never 5432 or 1883. Another
    process may still take it before our server binds it; callers that pick the port this
    way retry with a new one when the server reports "Address already in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def port_accepts_connections(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """Return True if a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
