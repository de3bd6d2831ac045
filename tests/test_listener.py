"""The webhook listener stays up: bounded connections, a whole-request deadline, early refusals, 400 for bad bodies.

The first tests run a real Listener on 127.0.0.1 and talk to it over raw sockets; the last one floods a real
`controller watch` with forged requests and trickling clients while a signed push goes through.
"""

from __future__ import annotations

import asyncio
import json
import logging
import select
import socket
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.vocabulary import Provider
from controller.web.listener import FULL_LINES
from controller.web.webhooks import sign
from tests.conftest import Fleet, bump_version
from tests.support.daemon import daemon, free_port, github_push, runs, version_is, wait_for, watch_config
from tests.support.webhooks import SECRETS, MiB, exchange, listening, post, read_all, status_of

SECRET = SECRETS[Provider.GITHUB]


def signed(body: bytes, **headers: str) -> bytes:
    return post("/hooks/github", body, {"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(body, SECRET),
                                        **headers})


@pytest.mark.parametrize(("body", "error"), [
    (b"[" * 100_000, "nested too deeply"),
    (b'{"a":' * 50_000, "nested too deeply"),
    (b"\xff\xfe{not json", "not JSON"),
    (b'{"after": ' + b"1" * 5000 + b"}", "not JSON"),
    (b'["refs/heads/main"]', "not a JSON object"),
    (b'{"ref": 5}', "'ref' in the body is a int, not a string"),
    (b'{"ref": "refs/heads/main", "after": ["abc"]}', "'after' in the body is a list, not a string"),
], ids=["deep-array", "deep-object", "binary", "huge-number", "array", "ref-int", "after-list"])
def test_well_signed_malformed_body_gets_400_with_a_json_error(body: bytes, error: str) -> None:
    with listening() as (listener, pushes):
        status, answer, _ = exchange(listener.port, signed(body))
        assert status == 400 and error in json.loads(answer)["error"]
        push = json.dumps(github_push("a" * 40)).encode()
        assert exchange(listener.port, signed(push, **{"X-GitHub-Delivery": "d1"}))[0] == 202  # still serving
    assert pushes == ["github"]


def test_expect_100_continue_gets_its_go_ahead_before_the_body() -> None:
    push = json.dumps(github_push("b" * 40)).encode()
    with listening() as (listener, pushes), socket.create_connection(("127.0.0.1", listener.port), timeout=5) as sock:
        sock.sendall(signed(push, Expect="100-continue").removesuffix(push))
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(push)
        assert status_of(read_all(sock)) == 202
    assert pushes == ["github"]


def test_whole_request_deadline_cuts_a_client_trickling_its_headers() -> None:
    request = b"POST /hooks/github HTTP/1.1\r\nX-Padding: " + b"a" * 2000  # 40 s at this pace: never finished
    with listening(deadline=1.0) as (listener, _), socket.create_connection(("127.0.0.1", listener.port)) as sock:
        started = time.monotonic()
        for byte in request:
            sock.sendall(bytes([byte]))
            if select.select([sock], [], [], 0.02)[0]:
                break  # the server answered: nothing more to trickle
        sock.settimeout(5)
        status, elapsed = status_of(read_all(sock)), time.monotonic() - started
        assert status == 408 and 0.9 < elapsed < 2.5, (status, elapsed)
        assert exchange(listener.port, b"GET /healthz HTTP/1.1\r\n\r\n")[0] == 200


def test_connections_are_bounded_without_a_thread_each() -> None:
    with listening(max_connections=8, deadline=30) as (listener, _):
        threads = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", listener.port)) for _ in range(8)]
        try:
            for sock in idle:
                sock.sendall(b"GET /healthz HT")  # started, never finished
            wait_for("8 connections being served", lambda: listener.server.connections == 8, timeout=5)
            status, answer, seconds = exchange(listener.port, b"GET /healthz HTTP/1.1\r\n\r\n")
            assert (status, json.loads(answer)["error"]) == (503, "busy: too many connections") and seconds < 1
            assert threading.active_count() == threads
        finally:
            for sock in idle:
                sock.close()
        wait_for("the connections to close", lambda: listener.server.connections == 0, timeout=5)
        assert exchange(listener.port, b"GET /healthz HTTP/1.1\r\n\r\n")[0] == 200


def test_healthz_answers_at_once_beside_hundreds_of_slow_clients() -> None:
    with listening() as (listener, _):
        threads = threading.active_count()
        slow = [socket.create_connection(("127.0.0.1", listener.port)) for _ in range(300)]
        try:
            for sock in slow:
                sock.sendall(b"POST /hooks/github HTTP/1.1\r\nX-Slow: ")
            wait_for("300 slow clients", lambda: listener.server.connections == 300, timeout=10)
            status, _, seconds = exchange(listener.port, b"GET /healthz HTTP/1.1\r\n\r\n")
            assert status == 200 and seconds < 1
            assert threading.active_count() == threads
        finally:
            for sock in slow:
                sock.close()


SIGNATURE = sign(b"", SECRET)


@pytest.mark.parametrize(("head", "status"), [
    (post("/hooks/github", b"", {"Content-Length": str(10**12)}), 401),
    (post("/hooks/github", b"", {"Content-Length": str(MiB), "X-Hub-Signature-256": "sha256=guess"}), 401),
    (post("/hooks/generic", b"", {"Content-Length": str(MiB)}), 401),
    (post("/hooks/gitlab", b"", {"Content-Length": str(MiB), "X-Gitlab-Token": "wrong"}), 401),
    (post("/hooks/gitlab", b"", {"Content-Length": str(MiB), "X-Gitlab-Token": SECRET.decode()}), 401),
    (post("/hooks/gitea", b"", {"Content-Length": str(MiB), "X-Gitea-Signature": "sha256=" + "0" * 64}), 401),
    (post("/hooks/gogs", b"", {"Content-Length": str(MiB)}), 401),
    (post("/hooks/bitbucket-server", b"", {"Content-Length": str(MiB), "X-Hub-Signature-256": SIGNATURE}), 401),
    (post("/hooks/bitbucket-cloud/guess", b"", {"Content-Length": str(MiB)}), 401),
    (post("/hooks/azure-devops", b"", {"Content-Length": str(MiB), "Authorization": "Basic Z3Vlc3M6Z3Vlc3M="}), 401),
    (post("/hooks/flux", b"", {"Content-Length": str(MiB), "X-Signature": "sha256=guess"}), 401),
    (post("/hooks/bitbucket", b"", {"Content-Length": str(MiB), "X-Hub-Signature-256": SIGNATURE}), 404),
    (post("/hooks/github", b"", {"Content-Length": str(MiB + 1), "X-Hub-Signature-256": SIGNATURE}), 413),
    (post("/hooks/github", b"", {"Content-Length": "lots", "X-Hub-Signature-256": SIGNATURE}), 411),
], ids=["no-signature", "malformed-signature", "generic-unsigned", "gitlab-token", "gitlab-github-secret",
        "gitea-prefixed", "gogs-unsigned", "bitbucket-server-github-header", "bitbucket-cloud-url",
        "azure-basic-auth", "flux-malformed", "path", "too-big", "no-length"])
def test_what_the_headers_refuse_is_refused_before_the_body(head: bytes, status: int) -> None:
    # the body never comes: an answer within the second shows the listener did not wait for it
    with listening(deadline=10) as (listener, pushes):
        answered, answer, seconds = exchange(listener.port, head)
        assert answered == status and "error" in json.loads(answer) and seconds < 1
    assert pushes == []


def test_webhooks_off_is_refused_before_the_body() -> None:
    with listening(secrets={}) as (listener, _):
        head = post("/hooks/github", b"", {"Content-Length": str(MiB), "X-Hub-Signature-256": SIGNATURE})
        status, _, seconds = exchange(listener.port, head)
        assert status == 403 and seconds < 1


def test_a_flood_of_refusals_is_logged_in_a_few_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="controller")
    forged = post("/hooks/github", b"{}", {"X-Hub-Signature-256": sign(b"{}", b"guess")})
    with listening() as (listener, _):
        for _ in range(40):
            assert exchange(listener.port, forged)[0] == 401
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == FULL_LINES + 1, lines
    assert lines[-1].startswith("refused 40 requests in the last ") and lines[-1].endswith("(401: 40)")


# The trial from the issue, end to end.

FLOOD_SECONDS = 20
FORGED_PER_SECOND = 300
TRICKLERS = 50
TRICKLE_INTERVAL = 0.1  # seconds between two bytes of a trickling client


@dataclass
class Flood:
    """What the flood sent and what came back."""

    sent: int = 0
    answers: Counter[int] = field(default_factory=Counter)
    failed: int = 0
    trickle_connections: int = 0
    trickles_cut: Counter[int] = field(default_factory=Counter)
    seconds: float = 0.0  # from the first request to the last answer

    def run(self, port: int) -> None:
        started = time.monotonic()
        asyncio.run(self._run(port))
        self.seconds = time.monotonic() - started

    async def _run(self, port: int) -> None:
        stop_at = asyncio.get_running_loop().time() + FLOOD_SECONDS
        await asyncio.gather(self._forge(port, stop_at), *(self._trickle(port, stop_at) for _ in range(TRICKLERS)))

    async def _forge(self, port: int, stop_at: float) -> None:
        body = json.dumps(github_push("f" * 40)).encode()
        request = post("/hooks/github", body, {"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(body, b"guess")})
        loop, in_flight = asyncio.get_running_loop(), set[asyncio.Task[None]]()
        due = loop.time()
        while due < stop_at:
            await asyncio.sleep(due - loop.time())
            due += 1 / FORGED_PER_SECOND  # a late loop catches up: the rate holds on average
            task = asyncio.create_task(self._request(port, request))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            self.sent += 1
        await asyncio.gather(*in_flight)

    async def _request(self, port: int, request: bytes) -> None:
        try:
            async with asyncio.timeout(10):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                self.answers[status_of(await reader.read())] += 1
                writer.close()
        except (OSError, TimeoutError):
            self.failed += 1

    async def _trickle(self, port: int, stop_at: float) -> None:
        """Connect, send a request one byte at a time that never ends; again when the server cuts it."""
        loop = asyncio.get_running_loop()
        request = b"POST /hooks/github HTTP/1.1\r\nX-Slow: " + b"a" * 10_000
        while loop.time() < stop_at:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            self.trickle_connections += 1
            answer = asyncio.ensure_future(reader.read())  # everything until the server closes
            try:
                for byte in request:
                    if loop.time() >= stop_at:
                        break
                    writer.write(bytes([byte]))
                    if (await asyncio.wait({answer}, timeout=TRICKLE_INTERVAL))[0]:
                        self.trickles_cut[status_of(answer.result())] += 1
                        break
            except OSError:
                self.trickles_cut[0] += 1
            finally:
                answer.cancel()
                writer.close()


def procstatus_of(pid: int) -> dict[str, int]:
    """VmRSS (kB) and Threads of a process, from /proc."""
    fields = {name: value for name, _, value in
              (line.partition(":") for line in Path(f"/proc/{pid}/status").read_text().splitlines())}
    return {"rss_kb": int(fields["VmRSS"].split()[0]), "threads": int(fields["Threads"])}


def timed_request(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, float]:
    started = time.monotonic()
    with urllib.request.urlopen(urllib.request.Request(url, body, headers or {}), timeout=10) as response:
        return response.status, time.monotonic() - started


def test_signed_push_goes_through_a_flood_of_forgeries_and_trickling_clients(
        converged_app: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = converged_app
    fleet.root.joinpath("webhook.secret").write_bytes(SECRET + b"\n")
    port = free_port()
    watch_config(fleet, listen=f"127.0.0.1:{port}", webhook_secret_file="webhook.secret")
    with daemon(fleet, port) as watch:
        wait_for("the first cycle", watch.cycled)
        assert version_is(fleet, "1.0.0")()
        before = procstatus_of(watch.proc.pid)
        count = len(runs(fleet))
        sha = bump_version(fleet, "2.0.0")
        body = json.dumps(github_push(sha)).encode()

        flood = Flood()
        flooding = threading.Thread(target=flood.run, args=(port,))
        flooding.start()
        time.sleep(3)  # every trickler connected, the forgeries at full rate
        during = procstatus_of(watch.proc.pid)
        push_status, push_seconds = timed_request(watch.url + "/hooks/github", body, {
            "X-GitHub-Event": "push", "X-GitHub-Delivery": "flood-1", "X-Hub-Signature-256": sign(body, SECRET)})
        health_status, health_seconds = timed_request(watch.url + "/healthz")
        peak = during
        while flooding.is_alive():
            flooding.join(timeout=1)
            now = procstatus_of(watch.proc.pid)
            peak = {key: max(peak[key], now[key]) for key in peak}
        after = procstatus_of(watch.proc.pid)

        wait_for("the pushed commit on the hosts", version_is(fleet, "2.0.0"))
        wait_for("the cycle to finish", watch.settled)
        time.sleep(1)  # a second run would have started by now
        new = runs(fleet)[: len(runs(fleet)) - count]
        log = watch.log()
        refusal_lines = [line for line in log.splitlines() if " refused " in line]
        with capsys.disabled():  # the figures belong in every run's output, not only a failing one's
            print(f"\nflood: {flood.sent} forged requests in {flood.seconds:.1f}s "
                  f"({flood.sent / flood.seconds:.0f}/s), "
                  f"answers {dict(flood.answers)}, {flood.failed} failed; {TRICKLERS} trickling clients made "
                  f"{flood.trickle_connections} connections, cut by the server with {dict(flood.trickles_cut)}")
            print(f"signed push: {push_status} in {push_seconds:.3f}s; "
                  f"/healthz: {health_status} in {health_seconds:.3f}s; "
                  f"runs started: {len(new)}")
            print(f"daemon: VmRSS {before['rss_kb'] / 1024:.1f} MiB before, {during['rss_kb'] / 1024:.1f} during, "
                  f"{peak['rss_kb'] / 1024:.1f} peak, {after['rss_kb'] / 1024:.1f} after; threads {before['threads']} "
                  f"before, {peak['threads']} peak, {after['threads']} after; {len(refusal_lines)} refusal log lines")

        assert push_status == 202 and push_seconds < 2
        assert health_status == 200 and health_seconds < 2
        assert [(r["trigger"], r["revision"]) for r in new] == [("webhook", sha)]
        assert log.count("webhook github: push to main") == 1
        assert flood.sent >= 0.9 * FLOOD_SECONDS * FORGED_PER_SECOND and flood.seconds < FLOOD_SECONDS + 5
        assert flood.answers[401] >= 0.95 * flood.sent
        assert sum(flood.trickles_cut.values()) >= TRICKLERS and flood.trickles_cut[408] >= TRICKLERS
        assert peak["rss_kb"] - before["rss_kb"] < 50 * 1024
        assert peak["threads"] <= before["threads"] + 10  # not one per connection
        assert 0 < len(refusal_lines) < 60 and any("refused" in line and "requests in the last" in line
                                                   for line in refusal_lines)
        assert watch.stop() == 0
