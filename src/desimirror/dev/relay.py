"""A byte-counting TCP relay on 127.0.0.1, placed between an S3 client and its server.

It counts every byte the server sends, headers included, so a figure is what crossed the
network, not what the client says it used (counting at the client would miss read-ahead
that was received and thrown away). The access tests use it to prove that a header read
fetches only a few MB, and ``make bench`` to print what each read path costs.
"""

from __future__ import annotations

import contextlib
import socket
import threading

CHUNK = 1 << 16


class CountingProxy:
    """A TCP relay ``127.0.0.1:port`` → ``upstream`` that counts bytes in each direction.

    One thread per connection direction; stopped by :meth:`close`. ``downstream`` is the
    number of bytes the server sent to clients since the last :meth:`reset`.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self.downstream = 0
        self.upstream_bytes = 0
        self.connections = 0
        self._closed = False
        self._socks: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @classmethod
    def for_url(cls, url: str) -> CountingProxy:
        """A proxy in front of ``http://HOST:PORT``."""
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self._lock:
            self.downstream = 0
            self.upstream_bytes = 0

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
                self._socks += [client, server]
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        try:
            while True:
                data = src.recv(CHUNK)
                if not data:
                    break
                with self._lock:
                    if down:
                        self.downstream += len(data)
                    else:
                        self.upstream_bytes += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._server.close()
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> CountingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
