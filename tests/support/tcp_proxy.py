"""A loopback TCP proxy that can cut every connection through it.

To see a page survive "the server dropped the connection" the test needs
to drop it mid-stream, as a restarting server, a load balancer or a flaky
network does, without stopping the server: the browser talks to the proxy,
the proxy to the server, and :meth:`TcpProxy.drop_all` closes both sides of
every open connection at once.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

from support.servers import LOOPBACK

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_port`` until closed."""

    def __init__(self, target_port: int) -> None:
        self.target = (LOOPBACK, target_port)
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.dropped = 0
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, server)
        selector.register(server, selectors.EVENT_READ, client)
        try:
            while True:
                for key, _ in selector.select(timeout=1):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            selector.close()
            self._forget(client, server)

    def _forget(self, client: socket.socket, server: socket.socket) -> None:
        with self._lock:
            if (client, server) in self._pairs:
                self._pairs.remove((client, server))
        for sock in (client, server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def drop_all(self) -> int:
        """Cut every open connection; return how many there were."""
        with self._lock:
            pairs = list(self._pairs)
        for client, server in pairs:
            for sock in (client, server):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self.dropped += len(pairs)
        return len(pairs)

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        self.drop_all()
