"""Free TCP ports, so tests that start servers or process groups never collide."""

import socket


def free_port() -> int:
    """A port the OS reports free on 127.0.0.1 now (each torchrun / server test asks anew)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
