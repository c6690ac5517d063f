"""``desimirror serve``: the live page over HTTP, from the standard library.

Why ``http.server``: the page is a handful of GET requests every few seconds from one or a
few browsers; a threaded standard-library server needs no dependency and no event loop,
and each request is one query against the state db. The db is opened once, without the
write lock, and the connection is made read-only (:func:`treeview.read_only`). An answer
is computed again only when another connection committed since (SQLite's
``data_version``), and while an upload commits every second, no more often than three
times the time the answer took: a viewer never takes more than a fraction of a core from
the upload it watches.
"""

from __future__ import annotations

import errno
import hmac
import http.cookies
import ipaddress
import json
import queue
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from desimirror.errors import DesimirrorError, UsageError, redact, sqlite_failure
from desimirror.state import treeview
from desimirror.state.manifest import FAILURE_REASONS, Manifest
from desimirror.view import data, page

REFRESH_SECONDS = 3.0
COOKIE = "desimirror_view_token"
_CACHE_ENTRIES = 256


def check_address(ip: str, token: str | None) -> None:
    """Another address than loopback only with a token: the page shows every path."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise UsageError(f"--ip {ip!r} is not an IP address (e.g. 127.0.0.1)") from None
    if not address.is_loopback and not token:
        raise UsageError(f"--ip {ip} would show the mirror to other machines: give --token as well")


@dataclass
class _Answer:
    token: int
    at: float
    cost: float
    body: bytes


class Answers:
    """JSON answers, each kept until the db changes (see the module's docstring).

    A few read-only connections, so that a quick answer (a directory's sizes) never waits
    behind a long one (the states below the root of ten million files); one more, never
    used for queries, watches ``data_version``, which only compares within one connection.
    The same question asked twice at once is computed once."""

    def __init__(self, db: str | Path, connections: int = 3) -> None:
        self.db = db
        self.watcher = open_view(db)
        self.watch_lock = threading.Lock()
        self.idle: queue.SimpleQueue[Manifest] = queue.SimpleQueue()
        self.opened: list[Manifest] = [self.watcher]
        self.slots = threading.Semaphore(connections)
        self.lock = threading.Lock()
        self.cache: dict[tuple, _Answer] = {}
        self.computing: dict[tuple, threading.Lock] = {}

    def version(self) -> int:
        with self.watch_lock:
            return treeview.change_token(self.watcher)

    def get(self, key: tuple, compute: Callable[[Manifest], Any]) -> bytes:
        with self.lock:
            one_at_a_time = self.computing.setdefault(key, threading.Lock())
        with one_at_a_time:
            version = self.version()
            now = time.monotonic()
            kept = self.cache.get(key)
            if kept and (kept.token == version or now - kept.at < 3 * kept.cost):
                return kept.body
            with self.slots:
                manifest = self._borrow()
                try:
                    body = json.dumps(compute(manifest), allow_nan=False).encode()
                finally:
                    self.idle.put(manifest)
            with self.lock:
                if len(self.cache) >= _CACHE_ENTRIES:
                    self.cache.clear()
                    idle = [k for k, lock in self.computing.items() if not lock.locked()]
                    for old in idle:
                        del self.computing[old]
                self.cache[key] = _Answer(version, now, time.monotonic() - now, body)
            return body

    def _borrow(self) -> Manifest:
        try:
            return self.idle.get_nowait()
        except queue.Empty:
            manifest = open_view(self.db)
            with self.lock:
                self.opened.append(manifest)
            return manifest

    def close(self) -> None:
        with self.lock:
            for manifest in self.opened:
                manifest.close()
            self.opened.clear()


class ViewServer(ThreadingHTTPServer):
    """The page, its static files and its API (``api/summary``, ``api/tree?path=[&quick=1]``,
    ``api/failures?reason=&q=&under=``), on one address. Opens the db first (a db that is
    not one is a state error), then the port."""

    daemon_threads = True

    def __init__(
        self,
        db: str | Path,
        host: str,
        port: int,
        token: str | None,
        refresh: float = REFRESH_SECONDS,
    ) -> None:
        self.answers = Answers(db)
        self.token = token
        self.refresh = refresh
        if ipaddress.ip_address(host).version == 6:
            self.address_family = socket.AF_INET6
        try:
            super().__init__((host, port), _Handler)
        except OSError as exc:
            self.answers.close()
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"port {port} on {host} is in use: pick another with --port"
                ) from None
            raise UsageError(f"cannot listen on {host} port {port}: {exc.strerror}") from None

    def server_close(self) -> None:
        super().server_close()
        self.answers.close()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/" + (f"?token={self.token}" if self.token else "")


class _Handler(BaseHTTPRequestHandler):
    server: ViewServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a refresh every few seconds would fill the terminal."""

    def do_GET(self) -> None:
        self.grant_cookie = False
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if not self._allowed(query):
            self._send(HTTPStatus.FORBIDDEN, b"a token is needed: open the URL serve printed\n")
            return
        route = url.path.lstrip("/")
        try:
            if route in ("", "index.html"):
                self._send(
                    HTTPStatus.OK, page.live_page(self.server.refresh), "text/html; charset=utf-8"
                )
            elif route.startswith("static/"):
                self._static(route.removeprefix("static/"))
            elif route.startswith("api/"):
                self._api(route.removeprefix("api/"), query)
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        except (DesimirrorError, sqlite3.Error) as exc:  # the db went away, or broke
            message = redact(
                str(sqlite_failure(exc) or exc) if isinstance(exc, sqlite3.Error) else str(exc)
            )
            sys.stderr.write(f"desimirror: error: {message}\n")
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": message})

    def _allowed(self, query: dict[str, str]) -> bool:
        wanted = self.server.token
        if not wanted:
            return True
        given = query.get("token")
        if given is not None:
            self.grant_cookie = hmac.compare_digest(given.encode(), wanted.encode())
        else:
            cookies = http.cookies.SimpleCookie(self.headers.get("Cookie", ""))
            given = cookies[COOKIE].value if COOKIE in cookies else ""
        return hmac.compare_digest(given.encode(), wanted.encode())

    def _static(self, name: str) -> None:
        body = page.asset(name)
        if body is None:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n")
            return
        self._send(HTTPStatus.OK, body, page.ASSETS[name])

    def _api(self, name: str, query: dict[str, str]) -> None:
        answers = self.server.answers
        if name == "summary":
            body = answers.get(("summary",), data.summary)
        elif name == "tree":
            path = query.get("path", "").strip("/")
            quick = query.get("quick") == "1"
            found = answers.get(
                ("tree", path, quick),
                lambda m: data.tree(m, path, data.keymap(m), quick=quick),
            )
            if found == b"null":
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no directory {path!r} in the tree"})
                return
            body = found
        elif name == "failures":
            reason = query.get("reason") or None
            if reason is not None and reason not in FAILURE_REASONS:
                self._json(HTTPStatus.BAD_REQUEST, {"error": f"no failure reason {reason!r}"})
                return
            text, under = query.get("q", ""), query.get("under", "").strip("/")
            body = answers.get(
                ("failures", reason, text, under),
                lambda m: data.failures(m, reason=reason, text=text, under=under),
            )
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n")
            return
        self._send(HTTPStatus.OK, body, "application/json")

    def _json(self, status: HTTPStatus, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, kind: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if self.grant_cookie:  # the URL carried the token: later requests need not
            cookie = f"{COOKIE}={self.server.token}; HttpOnly; SameSite=Strict; Path=/"
            self.send_header("Set-Cookie", cookie)
        self.end_headers()
        self.wfile.write(body)


def open_view(db: str | Path) -> Manifest:
    """The db for viewing: opened as ``status`` opens it (no write lock, never waiting for
    one), then made read-only."""
    manifest = Manifest.open(db)
    treeview.read_only(manifest)
    return manifest
