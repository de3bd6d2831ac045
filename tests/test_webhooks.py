"""Every Git host's push webhook, as that host sends and signs it, against a real Listener on 127.0.0.1.

The payloads in tests/data/webhooks are our own, written in the shape each provider documents for a push
(GitHub, GitLab, Gitea/Forgejo and Gogs push events, Bitbucket Data Center's repo:refs_changed, Bitbucket Cloud's
repo:push, Azure DevOps' git.push, and a body for Flux's generic-hmac receiver, which takes anything). The forges
themselves cannot run here; that each accepted delivery wakes a real daemon is tests/test_watch.py's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from controller.config import HostPort
from controller.vocabulary import Provider
from controller.web.listener import Listener, Routes
from controller.web.webhooks import shared_in_clear, sign

MiB = 1024 * 1024
SAMPLES = Path(__file__).parent / "data" / "webhooks"
SHA = "4e8d883a12f4c0ffee0ddba11c0ffee0ddba11c0"
# a secret of its own for every provider, as watch.webhooks has them
SECRETS = {provider: f"{provider}-secret-0123456789".encode() for provider in Provider}


@contextmanager
def listening(secrets: dict[Provider, bytes] | None = None, max_body: int = MiB,
              **limits: Any) -> Iterator[tuple[Listener, list[str]]]:
    """A real listener on a free port of 127.0.0.1, and the providers of the pushes it accepted."""
    pushes: list[str] = []
    routes = Routes(branch="main", secrets=SECRETS if secrets is None else secrets, max_body=max_body,
                    on_push=pushes.append, health=lambda: (200, {"status": "ok"}), metrics=lambda: b"up 1\n")
    listener = Listener(HostPort("127.0.0.1", 0), routes, **limits)
    listener.start()
    try:
        yield listener, pushes
    finally:
        listener.stop()


def exchange(port: int, data: bytes, timeout: float = 5) -> tuple[int, bytes, float]:
    """Send ``data`` on a new connection, read until the server closes: (status, body, seconds taken)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = read_all(sock)
    return status_of(answer), answer.partition(b"\r\n\r\n")[2], time.monotonic() - started


def post(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """A raw HTTP/1.1 POST with a correct Content-Length unless ``headers`` gives one."""
    lines = {"Host": "127.0.0.1", "Content-Length": str(len(body)), **headers}
    head = "".join(f"{name}: {value}\r\n" for name, value in lines.items())
    return f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + body


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer[9:12]) if answer.startswith(b"HTTP/1.") else 0


def delivery(sender: str, sha: str, secret: bytes, delivery_id: str) -> tuple[str, bytes, dict[str, str]]:
    """A push of ``sha`` to main as ``sender`` sends it (a provider, or ``forgejo``): path, body, headers."""
    provider = "gitea" if sender == "forgejo" else sender
    body = (SAMPLES / f"{provider}.json").read_text().replace("SHA", sha).encode()
    mac = hmac.new(secret, body, hashlib.sha256).hexdigest()
    headers: dict[str, str] = {"Content-Type": "application/json"}
    path = f"/hooks/{provider}"
    if sender == "github":
        headers |= {"X-GitHub-Event": "push", "X-GitHub-Delivery": delivery_id,
                    "X-Hub-Signature-256": f"sha256={mac}"}
    elif sender == "gitlab":
        headers |= {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Event-UUID": delivery_id,
                    "X-Gitlab-Token": secret.decode()}
    elif sender == "gitea":
        headers |= {"X-Gitea-Event": "push", "X-Gitea-Delivery": delivery_id, "X-Gitea-Signature": mac}
    elif sender == "forgejo":  # Forgejo sends its own headers beside Gitea's and GitHub's
        headers |= {"X-Forgejo-Event": "push", "X-Forgejo-Delivery": delivery_id, "X-Forgejo-Signature": mac,
                    "X-Gitea-Signature": mac, "X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={mac}"}
    elif sender == "gogs":
        headers |= {"X-Gogs-Event": "push", "X-Gogs-Delivery": delivery_id, "X-Gogs-Signature": mac}
    elif sender == "bitbucket-server":
        headers |= {"X-Event-Key": "repo:refs_changed", "X-Request-Id": delivery_id,
                    "X-Hub-Signature": f"sha256={mac}"}
    elif sender == "bitbucket-cloud":  # no signature: the secret is in the URL
        headers |= {"X-Event-Key": "repo:push", "X-Request-UUID": delivery_id, "X-Hook-UUID": "hook-1"}
        path += f"/{secret.decode()}"
    elif sender == "azure-devops":  # basic authentication; the delivery ID is the event's id in the body
        body = body.replace(b"8d3e2b4c-0000-4000-8000-0000000000b2", delivery_id.encode())
        headers["Authorization"] = "Basic " + base64.b64encode(b"controller:" + secret).decode()
    elif sender == "generic":
        headers |= {"X-Delivery-Id": delivery_id, "X-Signature-256": sign(body, secret)}
    elif sender == "flux":  # Flux's generic-hmac: the algorithm named before the hex (go-github's format)
        headers |= {"X-Delivery-Id": delivery_id,
                    "X-Signature": "sha512=" + hmac.new(secret, body, hashlib.sha512).hexdigest()}
    return path, body, headers


SENDERS = [*(p.value for p in Provider), "forgejo"]


@pytest.mark.parametrize("sender", SENDERS)
def test_each_providers_push_signed_as_it_signs_wakes_the_daemon_once(sender: str) -> None:
    provider = Provider("gitea" if sender == "forgejo" else sender)
    with listening() as (listener, pushes):
        path, body, headers = delivery(sender, SHA, SECRETS[provider], f"{sender}-1")
        status, answer, _ = exchange(listener.port, post(path, body, headers))
        assert (status, json.loads(answer)) == (202, {"accepted": True, "branch": "main",
                                                      "revision": None if sender == "flux" else SHA})
        assert pushes == [provider.value]
        status, answer, _ = exchange(listener.port, post(path, body, headers))  # the same delivery again
        assert status == 200 and "already received" in json.loads(answer)["ignored"]
        assert pushes == [provider.value]


@pytest.mark.parametrize("sender", SENDERS)
def test_a_wrong_signature_or_secret_is_401(sender: str) -> None:
    provider = Provider("gitea" if sender == "forgejo" else sender)
    # signed with a guess, and with another provider's secret: a secret serves its own provider only
    others = [b"a-guess-at-the-secret", SECRETS[Provider.GENERIC if provider != Provider.GENERIC else Provider.FLUX]]
    with listening() as (listener, pushes):
        for wrong in others:
            path, body, headers = delivery(sender, SHA, wrong, "d1")
            status, answer, _ = exchange(listener.port, post(path, body, headers))
            assert status == 401, answer
        assert pushes == []


def test_other_branches_and_events_trigger_nothing() -> None:
    with listening() as (listener, pushes):
        path, body, headers = delivery("bitbucket-server", SHA, SECRETS[Provider.BITBUCKET_SERVER], "d1")
        feature_only = json.dumps({**json.loads(body), "changes": json.loads(body)["changes"][:1]}).encode()
        mac = hmac.new(SECRETS[Provider.BITBUCKET_SERVER], feature_only, hashlib.sha256).hexdigest()
        headers["X-Hub-Signature"] = f"sha256={mac}"
        status, answer, _ = exchange(listener.port, post(path, feature_only, headers))
        assert (status, json.loads(answer)) == (200, {"ignored": "push to 'feature', watching 'main'"})
        ping = b"{}"
        mac = hmac.new(SECRETS[Provider.BITBUCKET_SERVER], ping, hashlib.sha256).hexdigest()
        assert exchange(listener.port, post(path, ping, {"X-Event-Key": "diagnostics:ping",
                                                         "X-Hub-Signature": f"sha256={mac}"}))[0] == 200
        path, body, headers = delivery("azure-devops", SHA, SECRETS[Provider.AZURE_DEVOPS], "d2")
        other = body.replace(b'"git.push"', b'"git.pullrequest.created"')
        status, answer, _ = exchange(listener.port, post(path, other, headers))
        assert (status, json.loads(answer)) == (200, {"ignored": "not a push event"})
        path, body, headers = delivery("gitea", SHA, SECRETS[Provider.GITEA], "d3")
        status, _, _ = exchange(listener.port, post(path, body, {**headers, "X-Gitea-Event": "issues"}))
        assert status == 200
    assert pushes == []


def test_flux_senders_may_sign_with_sha1_or_sha512_and_send_any_body() -> None:
    secret = SECRETS[Provider.FLUX]
    with listening() as (listener, pushes):
        for algorithm, body in (("sha1", b"not json at all"), ("sha256", b""), ("sha512", b'{"ref": "x"}')):
            signature = f"{algorithm}=" + hmac.new(secret, body, algorithm).hexdigest()
            assert exchange(listener.port, post("/hooks/flux", body, {"X-Signature": signature}))[0] == 202
        status, answer, _ = exchange(listener.port, post("/hooks/flux", b"x", {"X-Signature": "md5=" + "0" * 32}))
        assert status == 401 and "malformed X-Signature" in json.loads(answer)["error"]
    assert pushes == ["flux"] * 3


def test_bitbucket_clouds_secret_in_the_url_never_reaches_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="controller")
    secret = SECRETS[Provider.BITBUCKET_CLOUD]
    with listening() as (listener, pushes):
        path, body, headers = delivery("bitbucket-cloud", SHA, secret, "d1")
        assert exchange(listener.port, post(path, body, headers))[0] == 202
        wrong = path.replace(secret.decode(), secret.decode()[:-1] + "x")
        assert exchange(listener.port, post(wrong, body, headers))[0] == 401
        assert exchange(listener.port, post("/hooks/github/" + secret.decode(), body, headers))[0] == 404
    assert pushes == ["bitbucket-cloud"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "webhook bitbucket-cloud" in logged and secret.decode()[:-1] not in logged


def test_a_secret_shown_in_clear_may_serve_no_other_provider() -> None:
    same = b"one-secret-for-everything"
    assert shared_in_clear({Provider.GITHUB: same, Provider.GENERIC: same}) is None  # both only sign with it
    assert shared_in_clear({Provider.GITHUB: same, Provider.GITLAB: same}) == (Provider.GITLAB, Provider.GITHUB)
    assert shared_in_clear({Provider.GITLAB: same, Provider.AZURE_DEVOPS: same}) is not None
    assert shared_in_clear(SECRETS) is None
