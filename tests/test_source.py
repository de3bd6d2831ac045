"""The Git side: links out of the checkout, archives that would hang, credentials in the source URL."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.conftest import VERSION, Fleet, write_config
from tests.support.refusals import assert_refused

TOKEN = "glpat-canary-0f3c9a7e55d1"


def test_a_chain_of_links_that_leaves_the_checkout_is_refused(converged_app: Fleet) -> None:
    os.symlink(".", converged_app.work / "here")                   # inside: the checkout itself
    os.symlink("here/..", converged_app.work / "up")               # reads as inside, resolves to its parent
    converged_app.push("Links that only leave together")
    assert_refused(converged_app, ("sync",), "SnapshotFailed", "link out of the checkout")


def test_a_link_out_followed_by_a_large_file_is_refused_at_once(converged_app: Fleet) -> None:
    os.symlink("/etc/passwd", converged_app.work / "aaa-leak")      # archived first
    (converged_app.work / "zzz-large.bin").write_bytes(os.urandom(4 << 20))  # then far more than a pipe holds
    converged_app.push("Link out, then a large file")
    started = time.monotonic()
    assert_refused(converged_app, ("sync",), "SnapshotFailed", "aaa-leak")
    assert time.monotonic() - started < 30  # git archive is stopped, not waited for
    probe = subprocess.run(["flock", "--nonblock", str(converged_app.state / "controller.lock"), "true"], check=False)
    assert probe.returncode == 0


class _GitOverHttp(BaseHTTPRequestHandler):
    """``git http-backend`` behind HTTP basic auth: a Git host that wants a user name and a token."""

    root: Path
    expected = "Basic " + base64.b64encode(f"deploy:{TOKEN}".encode()).decode()

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1",
               "REQUEST_METHOD": self.command, "PATH_INFO": path, "QUERY_STRING": query,
               "CONTENT_TYPE": self.headers.get("Content-Type", ""), "REMOTE_USER": "deploy",
               "GIT_PROTOCOL": self.headers.get("Git-Protocol", "")}
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        headers = [line.split(": ", 1) for line in head.decode().split("\r\n") if ": " in line]
        status = next((int(v.split()[0]) for k, v in headers if k == "Status"), 200)
        self.send_response(status)
        for key, value in headers:
            if key != "Status":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def git_http_server(repository: Path) -> Iterator[str]:
    """Serve ``repository`` over smart HTTP with basic auth; yield the URL with the credentials in it."""

    class Handler(_GitOverHttp):
        root = repository.parent

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://deploy:{TOKEN}@127.0.0.1:{server.server_address[1]}/{repository.name}"
    finally:
        server.shutdown()
        server.server_close()


def test_credentials_in_the_source_url_reach_git_only_through_askpass(fleet_app: Fleet) -> None:
    fleet = fleet_app
    seen: list[str] = []
    stop = threading.Event()

    def sample() -> None:  # every command line on the machine while the controller runs
        while not stop.is_set():
            for entry in Path("/proc").iterdir():
                with suppress(OSError):
                    seen.append((entry / "cmdline").read_bytes().decode(errors="replace"))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    try:
        with git_http_server(fleet.remote) as url:
            write_config(fleet, source={"url": url, "branch": "main"})
            sampler.start()
            done = fleet.controller("sync", "--progress")
            stop.set()
            sampler.join()
            assert done.returncode == 0, done.stdout + done.stderr
            assert fleet.host_file("h1", VERSION).read_text() == "1.0.0\n"  # fetched with the token
            assert "deploy:[redacted]@127.0.0.1" in done.stderr
            assert any("git" in line and "fetch" in line for line in seen)

            # a wrong token: one line naming the URL, not the token
            write_config(fleet, source={"url": url.replace(TOKEN, TOKEN[::-1]), "branch": "main"})
            failed = fleet.controller("sync")
            assert failed.returncode == 1
            assert "cannot fetch http://deploy:[redacted]@" in failed.stderr
    finally:
        stop.set()
    everything = [done.stdout, done.stderr, failed.stdout, failed.stderr, *seen,
                  json.dumps(fleet.runs()), fleet.controller("status", "--json").stdout]
    assert not [text for text in everything if TOKEN in text or TOKEN[::-1] in text]
    stored = subprocess.run(["grep", "-rl", TOKEN, str(fleet.state)], capture_output=True, text=True, check=False)
    assert stored.stdout == ""  # not in the Git cache's config, the state store or anything else there


def test_a_token_in_the_user_name_or_percent_encoded_is_masked_too() -> None:
    from controller.source.git import RemoteUrl

    lone = RemoteUrl.parse("https://ghp_canary0123456789@github.example/org/fleet.git")
    assert lone.shown == "https://[redacted]@github.example/org/fleet.git"
    assert lone.bare == "https://github.example/org/fleet.git"
    assert lone.mask("fatal: ghp_canary0123456789 denied") == "fatal: [redacted] denied"
    encoded = RemoteUrl.parse("https://deploy:p%40ss%2Fword@git.example/fleet.git")
    assert encoded.password == "p@ss/word" and encoded.shown == "https://deploy:[redacted]@git.example/fleet.git"
    assert encoded.mask("p@ss/word and p%40ss%2Fword") == "[redacted] and [redacted]"
    ssh = RemoteUrl.parse("ssh://git@git.example/fleet.git")
    assert ssh.shown == ssh.bare == "ssh://git@git.example/fleet.git"  # git@ is no secret
