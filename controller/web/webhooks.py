"""Push webhooks from the Git hosts: authenticate each as its sender does, read which branches moved.

Each provider has a secret of its own (``watch.webhooks``). Most sign the body with it (an HMAC that never shows
the secret); GitLab, Bitbucket Cloud and Azure DevOps show the secret itself (a header, the URL, basic auth), so a
secret of theirs must never be another provider's signing key: whoever saw it could sign for that provider.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from controller.vocabulary import Provider


class Rejected(Exception):
    """The request is refused with an HTTP status; nothing is triggered."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Push:
    """A verified push event: which branches moved, to which commits, in which delivery."""

    heads: Mapping[str, str | None] | None  # branch -> its new commit; None: the sender does not say (Flux)
    delivery: str | None

    def moved(self, branch: str) -> bool:
        return self.heads is None or branch in self.heads

    def revision(self, branch: str) -> str | None:
        return None if self.heads is None else self.heads.get(branch)


@dataclass(frozen=True)
class Signature:
    """One header a sender signs the body in: ``PREFIX`` then the hex HMAC of the body with ``algorithm``."""

    header: str
    prefix: str      # "sha256=" as GitHub writes it; "" for the bare hex of Gitea and Gogs
    algorithm: str   # a hashlib name

    @property
    def digits(self) -> int:
        return hashlib.new(self.algorithm).digest_size * 2

    @property
    def shape(self) -> str:
        return f"{self.prefix} and {self.digits} hex digits" if self.prefix else f"{self.digits} hex digits"

    def matches(self, given: str) -> bool:
        """Whether ``given`` has this signature's form (the HMAC itself needs the body)."""
        return re.fullmatch(re.escape(self.prefix) + f"[0-9a-fA-F]{{{self.digits}}}", given) is not None


@dataclass(frozen=True)
class Sender:
    """What a provider sends: where its signature and event name are, which events are pushes, the delivery ID."""

    signatures: tuple[Signature, ...]        # none: the secret is shown in clear (checked in authenticate)
    # the branches a body says moved, and to which commits (None: not a push); no reader: the body is not read
    heads: Callable[[dict[str, Any]], dict[str, str | None] | None] | None
    events: tuple[str, ...] = ()             # headers naming the event (the first present); none: every one
    pushes: tuple[str, ...] = ("push",)      # the events that are pushes; a request naming no event is read as one
    deliveries: tuple[str, ...] = ()         # headers carrying the delivery ID


def _github_heads(event: dict[str, Any]) -> dict[str, str | None]:
    """``{"ref": "refs/heads/main", "after": SHA}`` (GitHub, Gitea, Gogs, GitLab's checkout_sha) or the generic
    ``{"branch": "main", "revision": SHA}``."""
    ref, branch = _text(event, "ref"), _text(event, "branch")
    if ref is not None and ref.startswith("refs/heads/"):
        branch = ref.removeprefix("refs/heads/")
    sha = _text(event, "checkout_sha") or _text(event, "after") or _text(event, "revision")
    return {} if branch is None else {branch: sha}


def _bitbucket_server_heads(event: dict[str, Any]) -> dict[str, str | None]:
    """repo:refs_changed: ``{"changes": [{"refId": "refs/heads/main", "toHash": SHA, "type": "UPDATE"}]}``."""
    heads: dict[str, str | None] = {}
    for change in _items(event, "changes"):
        ref = _text(change, "refId") or ""
        if ref.startswith("refs/heads/"):
            heads[ref.removeprefix("refs/heads/")] = _text(change, "toHash")
    return heads


def _bitbucket_cloud_heads(event: dict[str, Any]) -> dict[str, str | None]:
    """repo:push: ``{"push": {"changes": [{"new": {"type": "branch", "name": "main", "target": {"hash": SHA}}}]}}``
    (``new`` is null when the branch was deleted)."""
    heads: dict[str, str | None] = {}
    for change in _items(_object(event, "push"), "changes"):
        new = _object(change, "new")
        if _text(new, "type") == "branch" and (name := _text(new, "name")):
            heads[name] = _text(_object(new, "target"), "hash")
    return heads


def _azure_heads(event: dict[str, Any]) -> dict[str, str | None] | None:
    """git.push: ``{"eventType": "git.push", "resource": {"refUpdates": [{"name": "refs/heads/main",
    "newObjectId": SHA}]}}``; None for another event type."""
    if _text(event, "eventType") != "git.push":
        return None
    heads: dict[str, str | None] = {}
    for update in _items(_object(event, "resource"), "refUpdates"):
        ref = _text(update, "name") or ""
        if ref.startswith("refs/heads/"):
            heads[ref.removeprefix("refs/heads/")] = _text(update, "newObjectId")
    return heads


_SHA256 = "sha256"
SENDERS: dict[Provider, Sender] = {
    Provider.GITHUB: Sender((Signature("X-Hub-Signature-256", "sha256=", _SHA256),), _github_heads,
                            events=("X-GitHub-Event",), deliveries=("X-GitHub-Delivery",)),
    Provider.GITLAB: Sender((), _github_heads, events=("X-Gitlab-Event",), pushes=("Push Hook", "System Hook"),
                            deliveries=("X-Gitlab-Event-UUID", "X-Gitlab-Webhook-UUID")),
    # Gitea and Forgejo send their own headers and GitHub's
    Provider.GITEA: Sender((Signature("X-Forgejo-Signature", "", _SHA256), Signature("X-Gitea-Signature", "", _SHA256),
                            Signature("X-Hub-Signature-256", "sha256=", _SHA256)), _github_heads,
                           events=("X-Forgejo-Event", "X-Gitea-Event", "X-GitHub-Event"),
                           deliveries=("X-Forgejo-Delivery", "X-Gitea-Delivery", "X-GitHub-Delivery")),
    Provider.GOGS: Sender((Signature("X-Gogs-Signature", "", _SHA256),), _github_heads, events=("X-Gogs-Event",),
                          deliveries=("X-Gogs-Delivery",)),
    Provider.BITBUCKET_SERVER: Sender((Signature("X-Hub-Signature", "sha256=", _SHA256),), _bitbucket_server_heads,
                                      events=("X-Event-Key",), pushes=("repo:refs_changed",),
                                      deliveries=("X-Request-Id",)),
    Provider.BITBUCKET_CLOUD: Sender((), _bitbucket_cloud_heads, events=("X-Event-Key",), pushes=("repo:push",),
                                     deliveries=("X-Request-UUID",)),
    Provider.AZURE_DEVOPS: Sender((), _azure_heads),  # the event type and the delivery ID are in the body
    Provider.GENERIC: Sender((Signature("X-Signature-256", "sha256=", _SHA256),), _github_heads,
                             deliveries=("X-Delivery-Id",)),
    # Flux signs with go-github's ValidateSignature: the algorithm is named before the hex
    Provider.FLUX: Sender(tuple(Signature("X-Signature", f"{name}=", name) for name in ("sha1", "sha256", "sha512")),
                          None, deliveries=("X-Delivery-Id",)),
}


def authenticate(provider: Provider, headers: Mapping[str, str], secret: bytes, path_secret: str = "") -> None:
    """Refuse (401) what the headers alone show to be unauthenticated, before a byte of the body is read.

    A secret shown in clear (GitLab's token, Bitbucket Cloud's URL, Azure DevOps' password) is checked in full;
    signatures only for presence and form here, since the HMAC needs the body. ``headers`` has lower-case names;
    ``path_secret`` is what follows ``/hooks/bitbucket-cloud/`` in the URL.
    """
    # compare_digest keeps the time independent of where the first wrong character is
    if provider is Provider.GITLAB:
        if not hmac.compare_digest(headers.get("x-gitlab-token", "").encode(), secret):
            raise Rejected(401, "missing or wrong X-Gitlab-Token")
    elif provider is Provider.BITBUCKET_CLOUD:
        if not hmac.compare_digest(unquote(path_secret).encode(), secret):
            raise Rejected(401, "missing or wrong secret in the URL (/hooks/bitbucket-cloud/SECRET)")
    elif provider is Provider.AZURE_DEVOPS:
        if not hmac.compare_digest(_basic_password(headers.get("authorization", "")), secret):
            raise Rejected(401, "missing or wrong basic authentication (the password is the secret)")
    else:
        _signature(SENDERS[provider], headers)


def verify(provider: Provider, headers: Mapping[str, str], body: bytes, secret: bytes,
           path_secret: str = "") -> Push | None:
    """Check the request's signature or secret and parse it; ``None`` for a verified event that is not a push.

    ``headers`` has lower-case names. A body that is signed but malformed (not JSON, nested too deeply, not an
    object, fields of the wrong type) is refused with 400.
    """
    authenticate(provider, headers, secret, path_secret)
    sender = SENDERS[provider]
    if sender.signatures:
        signature, given = _signature(sender, headers)
        made = signature.prefix + hmac.new(secret, body, signature.algorithm).hexdigest()
        if not hmac.compare_digest(given.lower().encode(), made.encode()):
            raise Rejected(401, f"{signature.header} does not match the body (wrong secret?)")
    event = next((headers[h.lower()] for h in sender.events if h.lower() in headers), None)
    if event is not None and event not in sender.pushes:
        return None
    delivery = next((headers[h.lower()] for h in sender.deliveries if h.lower() in headers), None)
    if sender.heads is None:
        return Push(None, delivery)  # Flux's receivers take any body: a signed request is the news
    parsed = _json(body)
    heads = sender.heads(parsed)
    if heads is None:
        return None
    if provider is Provider.AZURE_DEVOPS:
        delivery = _text(parsed, "id")
    return Push(heads, delivery)


def sign(body: bytes, secret: bytes, prefix: str = "sha256=") -> str:
    """The signature GitHub-style senders put in their header (``prefix=""``: Gitea's and Gogs' bare hex)."""
    return prefix + hmac.new(secret, body, hashlib.sha256).hexdigest()


def shared_in_clear(secrets: Mapping[Provider, bytes]) -> tuple[Provider, Provider] | None:
    """A provider that shows its secret in clear and another with the same secret, if any."""
    for shown, secret in secrets.items():
        for other, other_secret in secrets.items():
            if shown.in_clear and other is not shown and hmac.compare_digest(secret, other_secret):
                return shown, other
    return None


def _signature(sender: Sender, headers: Mapping[str, str]) -> tuple[Signature, str]:
    """The signature header the request carries and its value; 401 when none is there in the expected form."""
    present = [s for s in sender.signatures if s.header.lower() in headers]
    for signature in present:
        given = headers[signature.header.lower()]
        if signature.matches(given):
            return signature, given
    if present:
        raise Rejected(401, f"malformed {present[0].header} (expected {' or '.join(s.shape for s in present)})")
    raise Rejected(401, f"missing {' or '.join(dict.fromkeys(s.header for s in sender.signatures))}")


def _basic_password(authorization: str) -> bytes:
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return b""
    try:
        return base64.b64decode(encoded.strip(), validate=True).partition(b":")[2]
    except (binascii.Error, ValueError):
        return b""


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


def _text(event: Any, key: str) -> str | None:
    value = event.get(key) if isinstance(event, dict) else None
    if value is not None and not isinstance(value, str):
        raise Rejected(400, f"{key!r} in the body is a {type(value).__name__}, not a string")
    return value


def _object(event: Any, key: str) -> dict[str, Any]:
    value = event.get(key) if isinstance(event, dict) else None
    if value is not None and not isinstance(value, dict):
        raise Rejected(400, f"{key!r} in the body is a {type(value).__name__}, not an object")
    return value or {}


def _items(event: Any, key: str) -> list[Any]:
    value = event.get(key) if isinstance(event, dict) else None
    if value is not None and not isinstance(value, list):
        raise Rejected(400, f"{key!r} in the body is a {type(value).__name__}, not a list")
    return value or []


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
