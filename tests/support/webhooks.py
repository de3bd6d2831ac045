"""Webhook deliveries as each forge signs them, and raw HTTP exchanges with a listener."""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from controller.config import HostPort
from controller.vocabulary import Provider
from controller.web.listener import Listener, Routes
from controller.web.webhooks import sign

MiB = 1024 * 1024


SAMPLES = Path(__file__).parent.parent / "data" / "webhooks"


# a secret of its own for every provider, as watch.webhooks has them
SECRETS = {provider: f"{provider}-secret-0123456789".encode() for provider in Provider}


@contextmanager
def listening(secrets: dict[Provider, bytes] | None = None, max_body: int = MiB,
              **limits: Any) -> Iterator[tuple[Listener, list[str]]]:
    """A real listener on a free port of 127.0.0.1, and the providers of the pushes it accepted."""
    pushes: list[str] = []
    routes = Routes(branch="main", secrets=SECRETS if secrets is None else secrets, max_body=max_body,
                    on_push=lambda provider, sha: pushes.append(provider), health=lambda: (200, {"status": "ok"}),
                    metrics=lambda: b"up 1\n")
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
