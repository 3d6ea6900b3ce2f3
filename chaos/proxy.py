"""A TCP forwarder between the workers and PostgreSQL, that a scenario cuts and restores; and
a database a worker reaches through a way that can be cut."""

from __future__ import annotations

import socket
import threading
from pathlib import Path


class Proxy:
    """Listens on ``port`` and forwards each connection to ``target``. ``cut()`` closes every
    forwarded connection and stops listening, so a connect is refused at once (a dropped packet
    would hold a worker for the driver's connect timeout instead); ``restore()`` listens again."""

    def __init__(self, target: tuple[str, int], port: int) -> None:
        self.target = target
        self.port = port
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    start = restore

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    _close(client)
                    _close(upstream)
                    return
                self._sockets |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            _close(sock)
            with self._lock:
                self._sockets.discard(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class Cuttable:
    """A database as a worker subprocess reaches it, through a way that can be cut: PostgreSQL
    through a ``Proxy`` (``proxy``), SQLite through its directory (``dir``; ``proxy`` None),
    renamed away and back. Used by the chaos suite and the outbox fault tests."""

    proxy: Proxy | None
    dir: Path

    def cut(self) -> None:
        if self.proxy is not None:
            self.proxy.cut()
        else:
            self.dir.rename(self.dir.with_name("db.away"))

    def restore(self) -> None:
        if self.proxy is not None:
            self.proxy.restore()
        else:
            self.dir.with_name("db.away").rename(self.dir)
