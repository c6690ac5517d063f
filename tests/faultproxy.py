"""A fault-injecting HTTP proxy for S3, on 127.0.0.1, in front of a real endpoint.

It forwards requests unchanged (the Host header too, so SigV4 signatures stay valid) and,
at configurable rates, misbehaves the ways a real network and a busy store do:

``slowdown``  answer 503 SlowDown without forwarding (the store asks to slow down)
``error500``  answer 500 InternalError without forwarding
``reset``     read part of the request body, then reset the connection (nothing stored)
``stall``     hold the request for ``stall_seconds`` before forwarding it
``truncate``  forward, then cut the response short (the store acted, the client cannot
              know: an empty-bodied reply loses the end of its headers)
``echo_auth`` answer 500 with the request's Authorization header in the error message
              (a store that leaks what it was sent: the client must not print it)

and, when ``flip_parts`` is set, flips one byte of the next ``flip_parts`` UploadPart
bodies of at least ``flip_min_bytes`` (a network that damages a part on the way: the store
must refuse it by its checksum), recording each one's status in ``flipped``.

It counts what it saw: every request (method, key, query: ``requests``), PUTs per object
key (PutObject and UploadPart), PUTs that reached the store, faults by kind, and requests
in flight at each arrival, so tests can assert
"nothing confirmed was sent again" and "concurrency went down", never wall-clock times.
``on_put(key)`` runs after a PUT's body has arrived and before it is forwarded.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import struct
import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape as xml_escape

FAULTS = ("slowdown", "error500", "reset", "stall", "truncate", "echo_auth")
_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
}  # Expect stays: some clients sign it (aws-sdk-go does), so it must reach the store


@dataclass(frozen=True)
class Arrival:
    """One request as it arrived."""

    seq: int
    method: str
    key: str
    in_flight: int  # requests in flight at the proxy, this one included
    puts_in_flight: int  # PUT requests in flight, this one included if it is a PUT
    fault: str | None


def _error_xml(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>faultproxy</RequestId></Error>"
    ).encode()


class FaultProxy:
    """See the module docstring. Use as a context manager, or call start() and stop()."""

    def __init__(
        self,
        upstream: str,
        *,
        rates: dict[str, float] | None = None,
        seed: int = 0,
        stall_seconds: float = 1.0,
        methods: set[str] | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.rates: dict[str, float] = dict(rates or {})
        self.methods = methods  # faults only for these methods (None: all)
        self.stall_seconds = stall_seconds
        self.on_put: Callable[[str], None] | None = None
        self.slowdown_budget = 0  # answer the next N PUTs with 503 SlowDown
        # answer the first PUTs of the first N keys with 503 SlowDown, per_key times each
        self.slowdown_keys = 0
        self.slowdown_per_key = 0
        self.throttled_keys: list[str] = []
        self.error_delay = 0.0  # seconds before a made-up error answer is sent
        self.flip_parts = 0  # flip a byte of the next N UploadPart bodies (see the docstring)
        self.flip_min_bytes = 1024
        self.flipped: list[tuple[str, int]] = []  # (key, the store's status) per flipped part
        # headers whose name starts with one of these are dropped on the way in and out
        # (("x-amz-checksum-",) models a store that ignores checksums, as Ceph radosgw 16)
        self.strip_headers: tuple[str, ...] = ()
        # signs a request again after headers were stripped: see sigv4_resigner
        self.resign: Callable[[str, str, list, bytes], list[tuple[str, str]]] | None = None
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._sockets: set[socket.socket] = set()
        self.puts: Counter[str] = Counter()
        self.stored_puts: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.arrivals: list[Arrival] = []
        #: (method, key, query string) of every request, in arrival order
        self.requests: list[tuple[str, str, str]] = []
        self._in_flight = 0
        self._puts_in_flight = 0

    # -- life cycle ---------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        server = _Server(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- bookkeeping ---------------------------------------------------------------------

    def reset_counts(self) -> None:
        with self._lock:
            self.puts.clear()
            self.stored_puts.clear()
            self.faults.clear()
            self.arrivals.clear()
            self.requests.clear()

    def _arrive(self, method: str, key: str) -> str | None:
        with self._lock:
            self._in_flight += 1
            is_put = method == "PUT"
            if is_put:
                self._puts_in_flight += 1
                self.puts[key] += 1
            fault = None
            new_key = is_put and self.puts[key] == 1 and key not in self.throttled_keys
            if new_key and len(self.throttled_keys) < self.slowdown_keys:
                self.throttled_keys.append(key)
            if is_put and key in self.throttled_keys and self.puts[key] <= self.slowdown_per_key:
                fault = "slowdown"
            elif is_put and self.slowdown_budget > 0:
                self.slowdown_budget -= 1
                fault = "slowdown"
            elif self.methods is None or method in self.methods:
                draw = self._random.random()
                for kind in FAULTS:
                    rate = self.rates.get(kind, 0.0)
                    if draw < rate:
                        fault = kind
                        break
                    draw -= rate
            if fault:
                self.faults[fault] += 1
            self.arrivals.append(
                Arrival(
                    len(self.arrivals), method, key, self._in_flight, self._puts_in_flight, fault
                )
            )
            return fault

    def _leave(self, method: str) -> None:
        with self._lock:
            self._in_flight -= 1
            if method == "PUT":
                self._puts_in_flight -= 1

    def _stored(self, method: str, key: str) -> None:
        if method == "PUT":
            with self._lock:
                self.stored_puts[key] += 1


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients dropping connections is what this proxy is for; nothing to print


class _Handler(BaseHTTPRequestHandler):
    """Forwards one connection's requests; misbehaves as the proxy decides."""

    owner: FaultProxy
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection is closed after this

    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            self.owner._sockets.add(self.connection)
        self._upstream: http.client.HTTPConnection | None = None

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        with self.owner._lock:
            self.owner._sockets.discard(self.connection)
        if self._upstream is not None:
            self._upstream.close()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._proxy()

    do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

    # -- one request ----------------------------------------------------------------------

    def _key(self) -> str:
        path = urllib.parse.urlsplit(self.path).path
        parts = urllib.parse.unquote(path).lstrip("/").split("/", 1)
        return parts[1] if len(parts) == 2 else ""

    def _read_body(self, limit: int | None = None) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if limit is not None:
            length = min(length, limit)
        return self.rfile.read(length) if length else b""

    def _proxy(self) -> None:
        owner, method, key = self.owner, self.command, self._key()
        with owner._lock:
            owner.requests.append((method, key, urllib.parse.urlsplit(self.path).query))
        fault = owner._arrive(method, key)
        try:
            self._serve(fault, method, key)
        finally:
            owner._leave(method)

    def _serve(self, fault: str | None, method: str, key: str) -> None:
        owner = self.owner
        if fault == "reset":
            length = int(self.headers.get("Content-Length") or 0)
            self._read_body(limit=length // 2)
            self._reset()
            return
        body = self._read_body()
        if fault in ("slowdown", "error500", "echo_auth"):
            owner._stopping.wait(owner.error_delay)
            status, code, message = {
                "slowdown": (503, "SlowDown", "Please reduce your request rate."),
                "error500": (500, "InternalError", "We encountered an internal error."),
                "echo_auth": (
                    500,
                    "InternalError",
                    xml_escape(f"bad Authorization: {self.headers.get('Authorization')}"),
                ),
            }[fault]
            self._reply(status, [("Content-Type", "application/xml")], _error_xml(code, message))
            return
        if fault == "stall" and owner._stopping.wait(owner.stall_seconds):
            self._reset()
            return
        if method == "PUT" and owner.on_put is not None:
            owner.on_put(key)
        flip = self._take_flip(method, body)
        if flip:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        try:
            status, reason, headers, payload = self._forward(method, body)
        except (OSError, http.client.HTTPException):
            self._reset()
            return
        if flip:
            with owner._lock:
                owner.flipped.append((key, status))
        owner._stored(method, key)
        if fault == "truncate":
            self._truncated(status, reason, headers, payload, method)
            return
        self._reply(status, headers, payload, reason=reason, head=method == "HEAD")

    def _take_flip(self, method: str, body: bytes) -> bool:
        owner = self.owner
        part = method == "PUT" and "partNumber=" in urllib.parse.urlsplit(self.path).query
        with owner._lock:
            if part and owner.flip_parts > 0 and len(body) >= owner.flip_min_bytes:
                owner.flip_parts -= 1
                owner.faults["flip"] += 1
                return True
        return False

    def _forward(self, method: str, body: bytes) -> tuple[int, str, list, bytes]:
        for attempt in (1, 2):  # a pooled upstream connection may have been closed
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(*self.owner.upstream, timeout=120)
            conn = self._upstream
            try:
                conn.putrequest(method, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self._request_headers(method, body):
                    conn.putheader(name, value)
                if body or method in ("PUT", "POST"):
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body or None)
                response = conn.getresponse()
                payload = response.read()
                headers = [
                    (k, v)
                    for k, v in response.getheaders()
                    if k.lower() not in _HOP and not self._stripped(k)
                ]
                if method == "HEAD":
                    length = response.getheader("Content-Length")
                    if length is not None:
                        headers.append(("Content-Length", length))
                return response.status, response.reason, headers, payload
            except (OSError, http.client.HTTPException):
                conn.close()
                self._upstream = None
                if attempt == 2:
                    raise
        raise RuntimeError("unreachable")

    def _request_headers(self, method: str, body: bytes) -> list[tuple[str, str]]:
        """The headers to forward: hop-by-hop and stripped ones dropped; re-signed when
        headers were stripped (they were signed: the store would refuse the request)."""
        headers = [
            (name, value)
            for name, value in self.headers.items()
            if name.lower() not in _HOP and not self._stripped(name)
        ]
        if self.owner.resign is None or len(headers) == len(
            [n for n in self.headers if n.lower() not in _HOP]
        ):
            return headers
        return self.owner.resign(method, self.path, headers, body)

    def _stripped(self, name: str) -> bool:
        return (
            name.lower().startswith(self.owner.strip_headers) if self.owner.strip_headers else False
        )

    def _reply(
        self,
        status: int,
        headers: list,
        payload: bytes,
        *,
        reason: str | None = None,
        head: bool = False,
    ) -> None:
        self.send_response_only(status, reason)
        for name, value in headers:
            self.send_header(name, value)
        if not head:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if not head:
            self.wfile.write(payload)
        self.wfile.flush()

    def _truncated(
        self, status: int, reason: str, headers: list, payload: bytes, method: str
    ) -> None:
        lines = [f"HTTP/1.1 {status} {reason}\r\n"]
        lines += [f"{k}: {v}\r\n" for k, v in headers]
        if method != "HEAD":
            lines.append(f"Content-Length: {len(payload)}\r\n")
        head = "".join(lines).encode("latin-1", "replace")
        if payload and method != "HEAD":
            data = head + b"\r\n" + payload[: len(payload) // 2]
        else:
            data = head[: len(head) // 2]  # no body to cut: cut the headers
        with contextlib.suppress(OSError):
            self.wfile.write(data)
            self.wfile.flush()
        self._reset()

    def _reset(self) -> None:
        """Close the client connection abruptly (RST), as a dropped connection looks."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self.connection.close()


def sigv4_resigner(access_key: str, secret_key: str, region: str = "us-east-1"):
    """A ``FaultProxy.resign`` function: SigV4-signs a forwarded request again with the
    test's own credentials, so a proxy that strips signed headers (as a store that ignores
    them would) does not turn every request into SignatureDoesNotMatch."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    signer = S3SigV4Auth(Credentials(access_key, secret_key), "s3", region)
    dropped = {"authorization", "x-amz-date", "x-amz-content-sha256"}

    def resign(method: str, path: str, headers: list, body: bytes) -> list[tuple[str, str]]:
        kept = [(k, v) for k, v in headers if k.lower() not in dropped]
        host = next(v for k, v in kept if k.lower() == "host")
        request = AWSRequest(method=method, url=f"http://{host}{path}", data=body)
        for name, value in kept:
            request.headers[name] = value
        signer.add_auth(request)
        return list(request.headers.items())

    return resign
