"""The scaffolding every fake provider API shares: a real HTTP/1.1 server on 127.0.0.1.

A fake runs in its own threads (``ThreadingHTTPServer``), not in a test's event loop, so
the same fake serves in-process tests and a daemon started as a subprocess. Subclasses
implement ``_route(request) -> Reply`` in the provider's own words; this base records every
request, and gives tests the same controls on every fake:

``fail_next(count, status=…, body=…)``, ``down = True`` (every request → 503), ``delay``
(seconds before each answer), ``on_request`` / ``before_reply`` hooks (fault injection,
e.g. SIGKILL the daemon mid-request), ``wait_for_sent`` / ``until_sent`` and
``wait_for_requests`` / ``until_requests``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qsl, urlsplit

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass
class RecordedRequest:
    """What the fake received (header names lower-cased) and the status it answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw: bytes
    body: Any = None  # parsed JSON, or the form/query fields as a dict
    status: int | None = None


@dataclass(frozen=True)
class Reply:
    """An HTTP answer the handler writes verbatim."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    """A JSON answer."""
    return Reply(status, json.dumps(payload).encode(), "application/json", headers or {})


def html_reply(status: int, text: str, headers: dict[str, str] | None = None) -> Reply:
    """An HTML error page, as web servers and proxies answer."""
    page = (
        f"<!DOCTYPE html><html><head><title>{text}</title></head>"
        f"<body><h1>{text}</h1></body></html>"
    )
    return Reply(status, page.encode(), "text/html; charset=UTF-8", headers or {})


class FakeHttpApi:
    """The server and the controls; attributes may be changed while it runs.

    ``sent`` holds what the subclass records as delivered (its own record type).
    """

    server_name = "FakeApi/1.0"

    def __init__(self) -> None:
        self.down = False
        self.delay = 0.0
        # Fault injection: called in the server thread when a request arrives (a true
        # result drops it unprocessed, as a provider that died would) and after
        # processing, before replying.
        self.on_request: Callable[[RecordedRequest], bool] | None = None
        self.before_reply: Callable[[RecordedRequest], None] | None = None
        self._lock = threading.Condition(threading.RLock())
        self._requests: list[RecordedRequest] = []
        self._sent: list[Any] = []
        self._failures: deque[Reply] = deque()
        self._hits: deque[float] = deque()
        self._connections: set[socket.socket] = set()
        self.connections_opened = 0  # TCP connections accepted: keep-alive shows as fewer
        self.errors: list[str] = []  # exceptions inside the fake itself: a test bug, not an answer
        self._stopping = threading.Event()
        self._server = _Server(self)
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(
            # A short poll interval: shutdown() waits for the loop to notice, once per test.
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=type(self).__name__,
            daemon=True,
        )
        self._thread.start()

    # ---- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and drop keep-alive connections, so no client waits on a dead fake."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        self._thread.join(timeout=5)

    # ---- what tests read -------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def sent(self) -> list[Any]:
        """Every SMS delivered, in the subclass's record type (a copy)."""
        with self._lock:
            return list(self._sent)

    def wait_for_sent(self, n: int, timeout: float = 10.0) -> list[Any]:
        """Block until at least ``n`` SMS were delivered; AssertionError with context if not."""
        self._wait(lambda: len(self._sent) >= n, timeout, f"{n} SMS sent")
        return self.sent

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Block until at least ``n`` requests arrived (any answer)."""
        self._wait(lambda: len(self._requests) >= n, timeout, f"{n} requests")
        return self.requests

    async def until_sent(self, n: int, timeout: float = 10.0) -> list[Any]:
        """Async ``wait_for_sent``: waits in a thread so the daemon's event loop keeps running."""
        return await asyncio.to_thread(self.wait_for_sent, n, timeout)

    async def until_requests(self, n: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Async ``wait_for_requests`` for tests running in the daemon's own event loop."""
        return await asyncio.to_thread(self.wait_for_requests, n, timeout)

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        with self._lock:
            if not self._lock.wait_for(ready, timeout):
                recent = [f"{r.method} {r.path} -> {r.status}" for r in self._requests[-5:]]
                raise AssertionError(
                    f"{type(self).__name__}: waited {timeout}s for {what}; got "
                    f"{len(self._sent)} sent, {len(self._requests)} requests (last: {recent}); "
                    f"errors: {self.errors}"
                )

    def minute_window(self, limit: int | None) -> int | None:
        """Count a request; seconds to wait if more than ``limit`` came within a minute.

        The sliding one-minute window Laravel's throttle and most APIs use; None: allowed.
        """
        if limit is None:
            return None
        now = time.monotonic()
        with self._lock:
            while self._hits and now - self._hits[0] >= 60:
                self._hits.popleft()
            if len(self._hits) < limit:
                self._hits.append(now)
                return None
            oldest = self._hits[0] if self._hits else now  # a limit of 0 refuses at once
            return max(1, math.ceil(60 - (now - oldest)))

    def record_sent(self, item: Any) -> None:
        """Add to ``sent`` and wake the waiters (subclasses call it for each SMS)."""
        with self._lock:
            self._sent.append(item)
            self._lock.notify_all()

    # ---- scripting -------------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 503,
        body: str | bytes | dict[str, Any] | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``count`` requests (any path) with this, before any other check."""
        if body is None:
            payload = html_reply(status, "Service Unavailable").body
        elif isinstance(body, dict):
            payload = json.dumps(body).encode()
        elif isinstance(body, str):
            payload = body.encode()
        else:
            payload = body
        if content_type is None:
            content_type = (
                "application/json" if isinstance(body, dict) else "text/html; charset=UTF-8"
            )
        reply = Reply(status, payload, content_type, dict(headers or {}))
        with self._lock:
            self._failures.extend([reply] * count)

    # ---- answering -------------------------------------------------------------------

    def _answer(self, request: RecordedRequest) -> Reply:
        """Route one request; ``down``, scripted failures and the delay come first."""
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()
        if self.on_request is not None and self.on_request(request):
            return html_reply(503, "Service Unavailable")
        if self.delay > 0:
            self._stopping.wait(self.delay)
        if self.down:
            return html_reply(503, "Service Unavailable")
        with self._lock:
            if self._failures:
                return self._failures.popleft()
        return self._route(request)

    def _route(self, request: RecordedRequest) -> Reply:
        """The provider's own answer to ``request``."""
        raise NotImplementedError


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive: every answer has a Content-Length."""

    protocol_version = "HTTP/1.1"
    server_version = "FakeApi/1.0"

    server: _Server

    @property
    def fake(self) -> FakeHttpApi:
        return self.server.fake

    def setup(self) -> None:
        super().setup()
        with self.fake._lock:
            self.fake._connections.add(self.connection)
            self.fake.connections_opened += 1

    def finish(self) -> None:
        with self.fake._lock:
            self.fake._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  the base class's name
        """Quiet: tests read ``fake.requests`` instead of stderr."""

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
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
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        url = urlsplit(self.path)
        raw = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        request = RecordedRequest(
            self.command, url.path, query, headers, raw, _parse(headers, raw, query)
        )
        try:
            reply = self.fake._answer(request)
        except Exception as exc:  # noqa: BLE001  a bug in the fake: answer 500 and keep the text
            self.fake.errors.append(f"{type(exc).__name__}: {exc}")
            reply = html_reply(500, "Server Error")
        if self.fake.before_reply is not None:
            self.fake.before_reply(request)
        request.status = reply.status
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Cache-Control", "no-cache, private")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle  # noqa: N815  http.server's names


class _Server(ThreadingHTTPServer):
    """One thread per connection, none of them keeping the test process alive."""

    daemon_threads = True

    def __init__(self, fake: FakeHttpApi) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:  # noqa: ARG002  the base class's signature
        """A client that hangs up (a killed daemon, a timeout) is normal; others are noted."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError | TimeoutError):
            self.fake.errors.append(f"{type(exc).__name__}: {exc}")


def _parse(headers: dict[str, str], raw: bytes, query: dict[str, str]) -> Any:
    """JSON or form body as the platform reads it; a GET's fields come from the query."""
    content_type = headers.get("content-type", "")
    if not raw:
        return query or None
    if "json" in content_type:
        try:
            return json.loads(raw)
        except ValueError:
            return None
    if "x-www-form-urlencoded" in content_type:
        return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    return None
