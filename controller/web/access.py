"""Who may read the dashboard and act from it: the tokens, the session cookie, the CSRF check, the login throttle.

Pages are read-only and answer without a token only on a loopback listener with no ``ui.token_file`` and no
``ui.tokens``; a listener other people can reach must have a token, or the controller refuses to start. Each
token has a holder's name (``ui.token_file``'s is ``dashboard``), which the audit trail records for what its
holder does; a read-only token reads every page and acts on none. Actions (sync, suspend, resume) are POSTs that
also need the CSRF token of this process, which only a page of this dashboard carries. Guesses at a token (a
wrong login, a wrong Bearer) are throttled per client.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from urllib.parse import urlsplit

from controller.config import HostPort, UiConfig
from controller.errors import ControllerError
from controller.secrets.sops import read_secret_file
from controller.vocabulary import Reason

log = logging.getLogger("controller")

SESSION_COOKIE = "controller_session"
CSRF_COOKIE = "controller_csrf"
MIN_TOKEN = 16  # characters: a token someone could guess in a few million tries protects nothing
GUESSES_PER_SECOND = 2.0  # wrong tokens a client may try on average ...
GUESS_BURST = 5           # ... and at once (a person mistyping), before each further try waits
FULL_LINES = 5            # wrong tokens logged one by one per window; the rest in the window's summary
MAX_CLIENTS = 4096        # clients whose guesses are remembered; beyond it, those with nothing held are forgotten


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (an address, or ``localhost``)."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name could resolve anywhere


@dataclass(frozen=True)
class Holder:
    """Who a request comes from: a token's holder (or anyone, on a loopback dashboard without tokens)."""

    name: str
    token: bytes | None = field(default=None, repr=False)  # None: the dashboard has no token
    read_only: bool = False

    def who(self, client: str) -> str:
        """The holder as the audit trail names them: the token's name and the address the request came from."""
        return f"{UNNAMED} ({client})" if self.name == UNNAMED else f"{self.name} (dashboard, {client})"

    @property
    def session(self) -> str:
        """The session cookie's value: the holder's name and a MAC derived from their token, so a new token ends
        its sessions (and only its)."""
        assert self.token is not None
        return f"{self.name}:{hmac.new(self.token, b'controller dashboard session', 'sha256').hexdigest()}"


UNNAMED = "dashboard"   # ui.token_file's holder, and anyone on a dashboard without tokens
ANYONE = Holder(UNNAMED)


@dataclass(frozen=True)
class Access:
    """The access rules of one running dashboard."""

    holders: tuple[Holder, ...] = ()  # no token: answers anyone (on loopback only)
    # a fresh value per process: forms of an older process are refused, and nothing outside a page knows it
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @classmethod
    def of(cls, ui: UiConfig, listen: HostPort) -> Access:
        """The rules for a dashboard on ``listen``; a ControllerError when it would be open to others."""
        given = ([(UNNAMED, ui.token_file, "ui.token_file", False)] if ui.token_file is not None else []) + [
            (t.name, t.file, f"ui.tokens[{number}].file", t.read_only) for number, t in enumerate(ui.tokens)]
        holders: list[Holder] = []
        for name, path, key, read_only in given:
            token = read_secret_file(path, key, Reason.CONFIG_INVALID)
            if len(token) < MIN_TOKEN:
                raise ControllerError(Reason.CONFIG_INVALID, f"{key} {path} holds a token of {len(token)} characters; "
                                      f"use at least {MIN_TOKEN} (openssl rand -hex 32)")
            for other in holders:
                if other.name == name or hmac.compare_digest(other.token or b"", token):
                    why = "the name of ui.token_file's holder" if other.name == name else f"{other.name}'s token too"
                    raise ControllerError(Reason.CONFIG_INVALID, f"{key}: {name!r} holds {why}: give each holder a "
                                          "name and a token of their own")
            holders.append(Holder(name, token, read_only))
        if not holders and not is_loopback(listen.host):
            raise ControllerError(Reason.CONFIG_INVALID, f"the dashboard would answer anyone on {listen}: set "
                                  "ui.token_file or ui.tokens (or listen on 127.0.0.1, or set ui.enabled: false)")
        return cls(tuple(holders))

    @property
    def protected(self) -> bool:
        """Whether every page asks for a token."""
        return bool(self.holders)

    def host_allowed(self, headers: dict[str, str]) -> bool:
        """Without a token, only loopback names may be asked for: a page fetched through another name
        (DNS rebinding: a web site whose name resolves to 127.0.0.1) must not read the dashboard."""
        if self.protected:
            return True
        host = headers.get("host", "")
        return is_loopback(host.rpartition(":")[0] if host.count(":") == 1 or "]:" in host else host)

    def bearer(self, headers: dict[str, str]) -> Holder | None:
        """Whose token the request carries in ``Authorization: Bearer`` (a browser never adds it by itself)."""
        scheme, _, given = headers.get("authorization", "").partition(" ")
        return self.login(given) if scheme.lower() == "bearer" else None

    def holder(self, headers: dict[str, str]) -> Holder | None:
        """Who the request comes from (its Bearer token or its session cookie); None: nobody this dashboard knows."""
        if not self.protected:
            return ANYONE
        if "authorization" in headers:  # a wrong one is a guess, whatever cookie comes with it
            return self.bearer(headers)
        session = cookies(headers).get(SESSION_COOKIE, "")
        name = session.partition(":")[0]
        return next((h for h in self.holders if h.name == name and hmac.compare_digest(session, h.session)), None)

    def login(self, given: str) -> Holder | None:
        """The holder of token ``given``, if any (every token is compared: no answer comes sooner for some)."""
        matches = [h for h in self.holders if hmac.compare_digest(given.strip().encode(), h.token or b"")]
        return matches[0] if matches else None

    def csrf_passed(self, headers: dict[str, str], form: dict[str, str]) -> str | None:
        """Why a form POST is refused as a possible cross-site request; None when it passes.

        The form field, the SameSite=Strict cookie (never sent with a request another site starts) and this
        process's token must agree, and a browser's Origin must be this very site.
        """
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != headers.get("host"):
            return f"the request came from another site ({origin})"
        field_value, cookie = form.get("csrf", ""), cookies(headers).get(CSRF_COOKIE, "")
        if not (hmac.compare_digest(field_value, self.csrf) and hmac.compare_digest(cookie, self.csrf)):
            return "the form is out of date or did not come from this dashboard: reload the page and try again"
        return None

    def cookie_headers(self, *, session: Holder | bool | None = None) -> tuple[tuple[str, str], ...]:
        """Set-Cookie headers: the CSRF cookie always; the session cookie set (a holder's) or cleared (False)."""
        flags = "Path=/; HttpOnly; SameSite=Strict"
        headers = [("Set-Cookie", f"{CSRF_COOKIE}={self.csrf}; {flags}")]
        if isinstance(session, Holder):
            headers.append(("Set-Cookie", f"{SESSION_COOKIE}={session.session}; {flags}"))
        elif session is False:
            headers.append(("Set-Cookie", f"{SESSION_COOKIE}=; Max-Age=0; {flags}"))
        return tuple(headers)


def cookies(headers: dict[str, str]) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except CookieError:
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


class Throttle:
    """Guesses at the token, per client: a bucket of ``burst`` tries refilled at ``rate`` a second. A client whose
    bucket is empty is refused (429) before its token is even compared. The log gets the first wrong tokens of
    each window one by one and one summary line for the rest (``summarise``, called every window)."""

    def __init__(self, rate: float = GUESSES_PER_SECOND, burst: int = GUESS_BURST) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._lock = threading.Lock()  # pages are rendered on several threads
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tries left, when counted)
        self._wrong: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()
        self._since = time.monotonic()

    def allowed(self, client: str) -> bool:
        """Whether ``client`` may try a token now; counted as refused when not."""
        with self._lock:
            if self._left(client) >= 1:
                return True
            self._refused[client] += 1
            return False

    def wrong(self, client: str, what: str) -> None:
        """``client`` tried a wrong token (``what``: a login, a Bearer token): one try fewer, and logged."""
        with self._lock:
            self._buckets[client] = (self._left(client) - 1, time.monotonic())
            self._wrong[client] += 1
            if self._wrong.total() <= FULL_LINES:
                log.warning("ui: wrong token (%s) from %s", what, client)
            if len(self._buckets) > MAX_CLIENTS:
                self._forget()

    def summarise(self) -> None:
        """Log what the window held beyond its first lines, and start a new window."""
        with self._lock:
            wrong, refused, now = self._wrong.total(), self._refused.total(), time.monotonic()
            if wrong > FULL_LINES or refused:
                clients = (self._wrong + self._refused).most_common(3)
                log.warning("ui: %d wrong tokens and %d tries refused as too fast (%g a second per client) in the "
                            "last %.0fs, from %s", wrong, refused, self.rate, now - self._since,
                            ", ".join(f"{client} ({count})" for client, count in clients))
            self._wrong.clear()
            self._refused.clear()
            self._since = now

    def _left(self, client: str) -> float:
        left, when = self._buckets.get(client, (self.burst, time.monotonic()))
        return min(self.burst, left + (time.monotonic() - when) * self.rate)

    def _forget(self) -> None:
        """Forget the clients whose bucket is full again, then (a guesser with very many addresses) the oldest."""
        for client in [c for c in self._buckets if self._left(c) >= self.burst]:
            del self._buckets[client]
        excess = max(0, len(self._buckets) - MAX_CLIENTS)
        for client in sorted(self._buckets, key=lambda c: self._buckets[c][1])[:excess]:
            del self._buckets[client]
