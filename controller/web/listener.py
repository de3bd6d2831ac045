"""The watch daemon's HTTP listener: push webhooks, /healthz, /metrics and the dashboard's pages.

It is built to stay up under a flood. One thread runs an asyncio loop that serves every connection, so a slow
client costs a socket and a few kilobytes, never a thread. What a client can make it hold is bounded:
``max_connections`` open at once (beyond that, a fast 503), one deadline for the whole request however slowly it
trickles in, headers of at most ``HEADER_LIMIT`` bytes, and ``BODY_BUDGET`` bytes of bodies read at once. Whatever
can be refused from the headers alone is refused before a byte of the body is read.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import logging
import re
import resource
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, NamedTuple

from prometheus_client import CONTENT_TYPE_LATEST

from controller.config import HostPort
from controller.errors import ControllerError
from controller.vocabulary import Provider, Reason
from controller.web.webhooks import Deliveries, Rejected, authenticate, verify

log = logging.getLogger("controller")

BACKLOG = 1024                # connections the kernel queues for a burst while the loop accepts them
MAX_CONNECTIONS = 512         # served at once; each holds at most a socket and 2 * HEADER_LIMIT of buffer
REQUEST_DEADLINE = 10.0       # seconds for a whole request, headers and body, however it trickles in
LINGER = 2.0                  # seconds to drain a client still sending after its answer (see _linger)
HEADER_LIMIT = 16 * 1024      # request line and headers; a webhook's are about 2 KiB
BODY_BUDGET = 32 * 1024 ** 2  # bytes of request bodies being read at once, all connections together
SUMMARY_WINDOW = 10.0         # seconds between summaries of refused requests
FULL_LINES = 5                # refusals logged one by one in each window before only counting them
FORM_LIMIT = 8 * 1024        # a dashboard form (a token, a reason) is a few hundred bytes
WORKERS = 4                  # threads rendering pages and metrics from the state store, so SQLite never blocks the loop
SERVER = "gitops-controller"
_LENGTH = re.compile(r"[0-9]{1,15}")


@dataclass(frozen=True)
class Routes:
    """What the listener serves; the daemon supplies the callbacks. ``on_push``, ``health`` and ``summarise`` run on
    the loop and must be quick; ``metrics`` and ``pages`` read the state store and run on the workers."""

    branch: str
    secrets: Mapping[Provider, bytes]  # the webhook secret of each provider; the others' hooks are off (403)
    max_body: int
    on_push: Callable[[Provider, str | None], None]  # the provider, and the revision pushed when it says
    health: Callable[[], tuple[int, dict[str, Any]]]
    metrics: Callable[[], bytes]
    # the dashboard: every other GET and POST
    pages: Callable[[WebRequest], Reply] | None = None
    # logs what the pages only counted (refused logins) since the last call; called every SUMMARY_WINDOW
    summarise: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class WebRequest:
    """One request for the dashboard, read in full (header names lower-cased)."""

    method: str
    path: str
    query: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    client: str = ""


class Listener:
    """An HTTP server on ``HOST:PORT`` (port 0 picks a free one), served from one thread."""

    def __init__(self, address: HostPort, routes: Routes, *, max_connections: int = MAX_CONNECTIONS,
                 deadline: float = REQUEST_DEADLINE) -> None:
        where = (address.host, address.port)
        sock = socket.socket(socket.AF_INET6 if ":" in address.host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
            sock.bind(where)
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            raise ControllerError(Reason.CONFIG_INVALID, f"cannot listen on {address}: {exc.strerror}") from exc
        # served and turned away, the listener holds up to twice the bound in sockets: under a low descriptor
        # limit (systemd's default soft limit is 1024) that leaves half for everything else
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY:
            max_connections = min(max_connections, soft // 4)
        self.server = Server(sock, routes, max_connections, deadline)
        self._thread = threading.Thread(target=self.server.run, name="listener", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        """Serve in the background; connections made before this wait in the backlog."""
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and drop the connections still open."""
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join(timeout=10)
        self.server.sock.close()


class Server:
    """The asyncio side of the listener: accept within the bound, read under the deadline, answer, close."""

    def __init__(self, sock: socket.socket, routes: Routes, max_connections: int, deadline: float) -> None:
        self.sock = sock
        self.server_address: tuple[str, int] = sock.getsockname()[:2]
        self.routes = routes
        self.max_connections = max_connections
        self.deadline = deadline
        self.deliveries = Deliveries()
        self.refusals = Refusals()
        # only touched on the loop's thread, so no locks
        self.connections = 0  # being served
        self.turned_away = 0  # over the bound, being told 503
        self.body_bytes = 0
        self.body_budget = max(BODY_BUDGET, routes.max_body)
        self._writers: set[asyncio.StreamWriter] = set()
        self._workers = ThreadPoolExecutor(WORKERS, thread_name_prefix="store")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()

    def run(self) -> None:
        """Serve until ``shutdown()``; runs on the listener's thread."""
        asyncio.run(self._serve())

    def shutdown(self) -> None:
        """Ask the loop to stop (from any thread)."""
        if self._ready.wait(timeout=10) and self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)

    async def _serve(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        # backlog again: create_server calls listen() once more, with 100 unless told
        server = await asyncio.start_server(self._connection, sock=self.sock, backlog=BACKLOG, limit=HEADER_LIMIT)
        summaries = asyncio.create_task(self._summaries())
        async with server:
            await self._stopping.wait()
        summaries.cancel()
        for writer in list(self._writers):
            writer.transport.abort()
        self._workers.shutdown(wait=False, cancel_futures=True)
        self.refusals.flush()
        self.routes.summarise()

    async def _summaries(self) -> None:
        while True:
            await asyncio.sleep(SUMMARY_WINDOW)
            self.refusals.flush()
            self.routes.summarise()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = str((writer.get_extra_info("peername") or ("?",))[0])
        self._writers.add(writer)
        try:
            if self.connections < self.max_connections:
                self.connections += 1
                try:
                    await self._exchange(reader, writer, client)
                finally:
                    self.connections -= 1
            elif self.turned_away < self.max_connections:
                # answered before reading anything; the socket stays only while the 503 is delivered
                self.turned_away += 1
                try:
                    await self._send(reader, writer, self._refusal(_Request(client, label="connection"),
                                                                   Rejected(503, "busy: too many connections")))
                finally:
                    self.turned_away -= 1
            else:
                self.refusals.add(503)  # past both bounds: not even an answer
                writer.transport.abort()
        finally:
            self._writers.discard(writer)
            # close() would wait for a client that never reads to take the rest of the answer
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()
            else:
                writer.transport.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str) -> None:
        request = _Request(client)
        try:
            answer = await self._answer(request, reader, writer)
        except Rejected as rejected:
            reply = self._refusal(request, rejected)
        except ConnectionError:
            return  # the client left
        except Exception:
            if self.refusals.add(500):
                log.exception("%s from %s failed", request.label, client)
            reply = Reply.error(500, "internal error (see the controller's log)").encode()
        else:
            log.debug("http %s %s %d", client, request.label, answer.status)  # a hook's path may hold its secret
            reply = answer.encode()
        await self._send(reader, writer, reply)

    async def _send(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply: bytes) -> None:
        writer.write(reply)
        try:
            async with asyncio.timeout(LINGER):
                await writer.drain()
                await _linger(reader, writer, 8 * self.routes.max_body)
        except (ConnectionError, TimeoutError):
            pass  # the client left, or would not read its answer

    async def _answer(self, request: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Reply:
        """The reply to one request, read and handled within the deadline."""
        try:
            async with asyncio.timeout(self.deadline):
                return await self._handle(request, reader, writer)
        except TimeoutError:
            raise Rejected(408, f"request not complete within {self.deadline:g}s") from None
        except asyncio.IncompleteReadError as incomplete:
            if not incomplete.partial and request.method is None:
                raise ConnectionAbortedError("connected and left without a word (a port probe)") from None
            raise Rejected(400, "connection closed before the request was complete") from None

    async def _handle(self, request: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Reply:
        await request.read_head(reader)
        if self.routes.pages is not None and request.method in ("GET", "POST") and (
                request.path not in ("/healthz", "/metrics") and not request.path.startswith("/hooks/")):
            return await self._page(request, reader)
        if request.method == "GET":
            return await self._get(request.path)
        if request.method != "POST":
            raise Rejected(405, "method not allowed (GET, POST)")
        name, _, path_secret = request.path.removeprefix("/hooks/").partition("/")
        if not request.path.startswith("/hooks/") or name not in tuple(Provider) or (
                path_secret and name != Provider.BITBUCKET_CLOUD):
            raise Rejected(404, f"no such hook (POST /hooks/{'|'.join(Provider)})")
        provider = Provider(name)
        length = self._admit(provider, request.headers, path_secret)
        if request.headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for this before sending a big body
        body = await self._body(reader, length)
        return self._hook(provider, request.headers, body, path_secret)

    async def _page(self, request: _Request, reader: asyncio.StreamReader) -> Reply:
        """A dashboard page or action, rendered on a page worker while the loop serves everyone else."""
        assert self.routes.pages is not None and request.method is not None
        body = b""
        if request.method == "POST":
            length = request.headers.get("content-length", "0")
            if not _LENGTH.fullmatch(length):
                raise Rejected(411, "Content-Length required")
            if int(length) > FORM_LIMIT:
                raise Rejected(413, f"form of {length} bytes is over the limit of {FORM_LIMIT}")
            body = await self._body(reader, int(length))
        web = WebRequest(request.method, request.path, request.query, request.headers, body, request.client)
        return await asyncio.get_running_loop().run_in_executor(self._workers, self.routes.pages, web)

    async def _get(self, path: str) -> Reply:
        if path == "/healthz":
            return Reply.json(*self.routes.health())
        if path == "/metrics":
            exposition = await asyncio.get_running_loop().run_in_executor(self._workers, self.routes.metrics)
            return Reply(200, exposition, CONTENT_TYPE_LATEST)
        raise Rejected(404, f"not found (GET /healthz, /metrics; POST /hooks/{'|'.join(Provider)})")

    def _admit(self, provider: Provider, headers: dict[str, str], path_secret: str) -> int:
        """Everything that can be refused from the headers alone; the body's length if nothing is."""
        secret = self.routes.secrets.get(provider)
        if secret is None:
            raise Rejected(403, f"webhooks from {provider} are off: give it a secret in watch.webhooks")
        # authentication before size, so a client without the secret learns nothing about the limits
        authenticate(provider, headers, secret, path_secret)
        length = headers.get("content-length")
        if length is None or not _LENGTH.fullmatch(length):
            raise Rejected(411, "Content-Length required")
        if int(length) > self.routes.max_body:
            raise Rejected(413, f"body of {length} bytes is over the limit of {self.routes.max_body}")
        return int(length)

    async def _body(self, reader: asyncio.StreamReader, length: int) -> bytes:
        if self.body_bytes + length > self.body_budget:
            raise Rejected(503, "busy: too many request bodies being read")
        self.body_bytes += length
        try:
            return await reader.readexactly(length)
        finally:
            self.body_bytes -= length

    def _hook(self, provider: Provider, headers: dict[str, str], body: bytes, path_secret: str) -> Reply:
        routes = self.routes
        push = verify(provider, headers, body, routes.secrets[provider], path_secret)  # _admit found the secret
        if push is None:
            return Reply.json(200, {"ignored": "not a push event"})
        if not push.moved(routes.branch):
            moved = ", ".join(repr(b) for b in push.heads or ()) or "no branch"
            return Reply.json(200, {"ignored": f"push to {moved}, watching {routes.branch!r}"})
        if push.delivery is not None and not self.deliveries.first_time(f"{provider}:{push.delivery}"):
            return Reply.json(200, {"ignored": f"delivery {push.delivery} already received"})
        sha = push.revision(routes.branch)
        log.info("webhook %s: push to %s (%s)", provider, routes.branch, (sha or "?")[:12])
        routes.on_push(provider, sha)
        return Reply.json(202, {"accepted": True, "branch": routes.branch, "revision": sha})

    def _refusal(self, request: _Request, rejected: Rejected) -> bytes:
        """The answer to a refused request, logged (or counted, under a flood)."""
        if self.refusals.add(rejected.status):
            log.warning("%s from %s refused (%d): %s", request.label, request.client, rejected.status,
                        rejected.message)
        return Reply.error(rejected.status, rejected.message).encode()


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int) -> None:
    """Half-close, then drop what the client still sends until it closes too.

    Closing a socket with unread input makes the kernel send a reset, and a client still sending a body we
    refused could lose our answer to it; so read and discard (a bounded amount, for at most LINGER seconds).
    """
    if writer.can_write_eof():
        writer.write_eof()
    dropped = 0
    while dropped <= limit and (chunk := await reader.read(65536)):
        dropped += len(chunk)


class _Request:
    """What has been read of one request so far (for the answer and the log line)."""

    def __init__(self, client: str, label: str = "request") -> None:
        self.client = client
        self.label = label
        self.method: str | None = None
        self.path = ""
        self.query = ""
        self.headers: dict[str, str] = {}

    async def read_head(self, reader: asyncio.StreamReader) -> None:
        """Read and parse the request line and headers (header names lower-cased)."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise Rejected(431, f"request line and headers over {HEADER_LIMIT} bytes") from None
        line, _, rest = head.partition(b"\r\n")
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise Rejected(400, "malformed request line")
        self.method, (self.path, _, self.query) = parts[0], parts[1].partition("?")
        # a hook's provider alone: Bitbucket Cloud's path goes on with its secret
        hook = self.path.removeprefix("/hooks/").partition("/")[0]
        label = f"webhook {hook}" if self.path.startswith("/hooks/") else f"{self.method} {self.path}"
        # the client chose these characters: none may move the terminal's cursor or fake a log line
        self.label = "".join(c if c.isprintable() else "?" for c in label[:80])
        try:
            message = http.client.parse_headers(io.BytesIO(rest))
        except http.client.HTTPException:
            raise Rejected(400, "malformed headers") from None
        # the first of repeated headers wins, as with http.server
        for name, value in reversed(message.items()):
            self.headers[name.lower()] = value


class Reply(NamedTuple):
    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()  # more, such as Location and Set-Cookie

    @classmethod
    def json(cls, status: int, payload: dict[str, Any]) -> Reply:
        return cls(status, (json.dumps(payload) + "\n").encode(), "application/json")

    @classmethod
    def error(cls, status: int, message: str) -> Reply:
        return cls.json(status, {"error": message})

    def encode(self) -> bytes:
        """The whole response; every connection carries one request, so it always ends with the connection."""
        extra = "Retry-After: 1\r\n" if self.status == 503 else ""
        extra += "".join(f"{name}: {value}\r\n" for name, value in self.headers)
        head = (f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}\r\nServer: {SERVER}\r\n"
                f"Date: {formatdate(usegmt=True)}\r\nContent-Type: {self.content_type}\r\n"
                f"Content-Length: {len(self.body)}\r\n{extra}Connection: close\r\n\r\n")
        return head.encode("latin-1") + self.body


class Refusals:
    """Refused requests for the log: the first few of each window one by one, then one summary for the window."""

    def __init__(self, first: int = FULL_LINES) -> None:
        self.first = first
        self.counts: Counter[int] = Counter()
        self.since = time.monotonic()

    def add(self, status: int) -> bool:
        """Count one refusal; whether to log it in full."""
        self.counts[status] += 1
        return self.counts.total() <= self.first

    def flush(self) -> None:
        """Log a summary if the window had refusals that were only counted, and start a new window."""
        total, now = self.counts.total(), time.monotonic()
        if total > self.first:
            statuses = ", ".join(f"{status}: {count}" for status, count in sorted(self.counts.items()))
            log.warning("refused %d requests in the last %.0fs (%s)", total, now - self.since, statuses)
        self.counts.clear()
        self.since = now
