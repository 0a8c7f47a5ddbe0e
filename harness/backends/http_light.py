"""A small keep-alive HTTP/1.1 client for JSON POSTs to one plain-http origin.

The openai SDK costs about 1.5 ms of CPU per call (request transformation, pydantic models,
httpx's connection-pool bookkeeping, which grows with the pool); against a local server
that answers in well under a millisecond that, not the server, sets the pace. This client
does only what a local OpenAI-compatible server needs: persistent connections (one request
at a time each), Content-Length and chunked bodies, ``Connection: close``. No TLS, proxies,
redirects or compression: https URLs and anything else go through the SDK.
"""
from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

IDLE_EXPIRY_S = 2.0  # servers drop idle keep-alive connections (uvicorn: after 5 s); reuse only fresher ones


class HTTPStatusError(Exception):
    def __init__(self, status: int, headers: dict, body: bytes):
        super().__init__(f"HTTP {status}")
        self.status, self.headers, self.body = status, headers, body


class _Conn(asyncio.Protocol):
    """One connection; ``LightHTTP._exchange`` writes a request on it and awaits ``waiter``, which
    is resolved once the whole response is in ``buf`` (or the connection breaks)."""

    def __init__(self):
        self.transport = None
        self.closed = False
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.got_bytes = False
        self.idle_since = 0.0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        self.got_bytes = True
        if self.waiter is not None and not self.waiter.done():
            try:
                parsed = _parse(self.buf, eof=False)
            except ValueError as e:
                self.waiter.set_exception(ConnectionError(f"bad HTTP response: {e}"))
                self.close()
                return
            if parsed is not None:
                self.waiter.set_result(parsed)

    def eof_received(self):
        if self.waiter is not None and not self.waiter.done() and self.buf:
            try:  # a body delimited by the end of the connection
                parsed = _parse(self.buf, eof=True)
            except ValueError:
                parsed = None
            if parsed is not None:
                self.waiter.set_result(parsed)
        return False

    def connection_lost(self, exc):
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed before the response ended ({exc})"))

    def close(self):
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _parse(buf: bytearray, eof: bool):
    """(status, headers, body, keep_alive) once ``buf`` holds a whole response, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/"):
        raise ValueError(f"status line {lines[0][:80]!r}")
    status = int(rest[:3])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    start = end + 4
    if status == 100:  # an interim answer: drop it, the real one follows
        del buf[:start]
        return _parse(buf, eof) if buf else None
    conn = headers.get("connection", "").lower()
    keep = conn != "close" and (version != "HTTP/1.0" or conn == "keep-alive")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body, pos = bytearray(), start
        while True:
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                return None
            size = int(bytes(buf[pos:nl]).split(b";")[0], 16)
            if size == 0:  # the last chunk, then (optional trailers and) an empty line
                return (status, headers, bytes(body), keep) if buf.find(b"\r\n\r\n", nl) >= 0 else None
            if len(buf) < nl + 2 + size + 2:
                return None
            body += buf[nl + 2:nl + 2 + size]
            pos = nl + 2 + size + 2
    if "content-length" in headers:
        n = int(headers["content-length"])
        return (status, headers, bytes(buf[start:start + n]), keep) if len(buf) >= start + n else None
    if status in (204, 304):
        return status, headers, b"", keep
    return (status, headers, bytes(buf[start:]), False) if eof else None


class LightHTTP:
    """POST JSON bytes to one ``http://host:port`` origin over a pool of keep-alive connections."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout_s: float | None = 120.0):
        u = urlsplit(base_url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"the light HTTP client takes http://host[:port] URLs only, not {base_url!r}")
        self.host, self.port = u.hostname, u.port or 80
        self.prefix = u.path.rstrip("/")
        fixed = {"Host": u.netloc.rpartition("@")[2], "Content-Type": "application/json", "Accept": "application/json",
                 "User-Agent": "janus-harness", "Connection": "keep-alive", **headers}
        self._head = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self.timeout_s = timeout_s
        self._idle: list[_Conn] = []

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Conn, self.host, self.port)
        return conn

    def _take_idle(self) -> _Conn | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to have been dropped
            if not conn.closed and now - conn.idle_since < IDLE_EXPIRY_S:
                return conn
            conn.close()
        return None

    async def post(self, path: str, body: bytes) -> tuple[int, dict, bytes]:
        """(status, headers, body) of a 2xx answer; HTTPStatusError for any other status,
        ConnectionError or TimeoutError when no whole answer came."""
        data = (f"POST {self.prefix}{path} HTTP/1.1\r\n{self._head}Content-Length: {len(body)}\r\n\r\n"
                .encode("latin-1") + body)
        conn = self._take_idle()
        if conn is not None:
            try:
                return await self._exchange(conn, data)
            except ConnectionError:
                if conn.got_bytes:
                    raise
                # the server had dropped the idle connection before reading the request: once more, fresh
        return await self._exchange(await self._connect(), data)

    async def _exchange(self, conn: _Conn, data: bytes) -> tuple[int, dict, bytes]:
        loop = asyncio.get_running_loop()
        conn.buf.clear()
        conn.got_bytes = False
        conn.waiter = loop.create_future()
        timer = loop.call_later(self.timeout_s, _expire, conn.waiter, self.timeout_s) if self.timeout_s else None
        try:
            conn.transport.write(data)
            status, headers, body, keep = await conn.waiter
        except BaseException:  # timeout, cancellation, a broken answer: the connection is unusable
            conn.close()
            raise
        finally:
            conn.waiter = None
            if timer is not None:
                timer.cancel()
        if keep and not conn.closed:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()
        if not 200 <= status < 300:
            raise HTTPStatusError(status, headers, body)
        return status, headers, body

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


def _expire(fut: asyncio.Future, after: float) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError(f"no answer within {after}s"))
