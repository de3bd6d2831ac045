"""Push webhooks from GitHub, GitLab and generic senders: verify the signature, read the pushed branch."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
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


def authenticate(provider: str, headers: Mapping[str, str], secret: bytes) -> None:
    """Refuse (401) what the headers alone show to be unauthenticated, before a byte of the body is read.

    GitLab's token is checked in full; GitHub's and generic signatures only for presence and form here, since the
    HMAC needs the body. ``headers`` has lower-case names.
    """
    if provider == "gitlab":
        # compare_digest keeps the time independent of where the first wrong character is
        if not hmac.compare_digest(headers.get("x-gitlab-token", "").encode(), secret):
            raise Rejected(401, "missing or wrong X-Gitlab-Token")
        return
    header = _signature_header(provider)
    given = headers.get(header.lower(), "")
    if not given:
        raise Rejected(401, f"missing {header}")
    if not _SIGNATURE.fullmatch(given):
        raise Rejected(401, f"malformed {header} (expected sha256= and 64 hex digits)")


def verify(provider: str, headers: Mapping[str, str], body: bytes, secret: bytes) -> Push | None:
    """Check the request's signature or token and parse it; ``None`` for a verified non-push event (ping).

    ``headers`` has lower-case names. A body that is signed but malformed (not JSON, nested too deeply, not an
    object, fields of the wrong type) is refused with 400.
    """
    authenticate(provider, headers, secret)
    if provider == "gitlab":
        delivery = headers.get("x-gitlab-event-uuid") or headers.get("x-gitlab-webhook-uuid")
        is_push = headers.get("x-gitlab-event") in ("Push Hook", "System Hook")
    else:
        header = _signature_header(provider)
        if not hmac.compare_digest(headers[header.lower()].encode(), sign(body, secret).encode()):
            raise Rejected(401, f"{header} does not match the body (wrong secret?)")
        delivery = headers.get("x-github-delivery") if provider == "github" else headers.get("x-delivery-id")
        is_push = headers.get("x-github-event", "push") == "push" if provider == "github" else True
    if not is_push:
        return None
    event = _json(body)
    ref, branch = _text(event, "ref"), _text(event, "branch")
    if ref is not None and ref.startswith("refs/heads/"):
        branch = ref.removeprefix("refs/heads/")
    sha = _text(event, "checkout_sha") or _text(event, "after") or _text(event, "revision")
    return Push(branch, sha, delivery)


def sign(body: bytes, secret: bytes) -> str:
    """The ``sha256=...`` signature GitHub and generic senders put in their header."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


_SIGNATURE = re.compile(r"sha256=[0-9a-f]{64}")


def _signature_header(provider: str) -> str:
    return "X-Hub-Signature-256" if provider == "github" else "X-Signature-256"


def _json(body: bytes) -> dict[str, Any]:
    try:
        event = json.loads(body)
    except RecursionError:
        # json's C scanner stops at the interpreter's recursion limit ('[' * 100000): a 400, not a dropped connection
        raise Rejected(400, "body is JSON nested too deeply") from None
    except ValueError:  # also a number of over 4300 digits, which int() refuses
        raise Rejected(400, "body is not JSON") from None
    if not isinstance(event, dict):
        raise Rejected(400, "body is not a JSON object")
    return event


def _text(event: dict[str, Any], key: str) -> str | None:
    value = event.get(key)
    if value is not None and not isinstance(value, str):
        raise Rejected(400, f"{key!r} in the body is a {type(value).__name__}, not a string")
    return value


class Deliveries:
    """Delivery IDs seen recently: a redelivered webhook triggers nothing (bounded memory)."""

    def __init__(self, size: int = 1000) -> None:
        self.size = size
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()  # safe to share between threads, though the listener uses one

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
