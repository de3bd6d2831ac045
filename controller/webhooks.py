"""Push webhooks from GitHub, GitLab and generic senders: verify the signature, read the pushed branch."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PROVIDERS = ("github", "gitlab", "generic")


class Rejected(Exception):
    """The request is refused with an HTTP status; nothing is triggered."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Push:
    """A verified push event: which branch moved, to which commit, in which delivery."""

    branch: str | None
    sha: str | None
    delivery: str | None


def verify(provider: str, headers: Mapping[str, str], body: bytes, secret: bytes) -> Push | None:
    """Check the request's signature or token and parse it; ``None`` for a verified non-push event (ping).

    ``headers`` has lower-case names.
    """
    if provider == "gitlab":
        token = headers.get("x-gitlab-token", "")
        if not hmac.compare_digest(token.encode(), secret):
            raise Rejected(401, "missing or wrong X-Gitlab-Token")
        delivery = headers.get("x-gitlab-event-uuid") or headers.get("x-gitlab-webhook-uuid")
        is_push = headers.get("x-gitlab-event") in ("Push Hook", "System Hook")
    else:
        header = "X-Hub-Signature-256" if provider == "github" else "X-Signature-256"
        _check_hmac(headers.get(header.lower(), ""), body, secret, header)
        delivery = headers.get("x-github-delivery") if provider == "github" else headers.get("x-delivery-id")
        is_push = headers.get("x-github-event", "push") == "push" if provider == "github" else True
    if not is_push:
        return None
    event = _json(body)
    ref = event.get("ref")
    branch = event.get("branch")
    if isinstance(ref, str) and ref.startswith("refs/heads/"):
        branch = ref.removeprefix("refs/heads/")
    sha = event.get("checkout_sha") or event.get("after") or event.get("revision")
    return Push(branch if isinstance(branch, str) else None, sha if isinstance(sha, str) else None, delivery)


def sign(body: bytes, secret: bytes) -> str:
    """The ``sha256=...`` signature GitHub and generic senders put in their header."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _check_hmac(given: str, body: bytes, secret: bytes, header: str) -> None:
    if not given:
        raise Rejected(401, f"missing {header}")
    # compare_digest keeps the time independent of where the first wrong character is
    if not hmac.compare_digest(given.encode(), sign(body, secret).encode()):
        raise Rejected(401, f"{header} does not match the body (wrong secret?)")


def _json(body: bytes) -> dict[str, Any]:
    try:
        event = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Rejected(400, "body is not JSON") from None
    if not isinstance(event, dict):
        raise Rejected(400, "body is not a JSON object")
    return event


class Deliveries:
    """Delivery IDs seen recently: a redelivered webhook triggers nothing (bounded memory)."""

    def __init__(self, size: int = 1000) -> None:
        self.size = size
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()  # the listener serves each request on its own thread

    def first_time(self, delivery: str | None) -> bool:
        if delivery is None:
            return True
        with self._lock:
            if delivery in self._seen:
                return False
            self._seen[delivery] = None
            if len(self._seen) > self.size:
                self._seen.popitem(last=False)
            return True
