"""Who may read the dashboard and act from it: the token, the session cookie, the CSRF check.

Pages are read-only and answer without a token only on a loopback listener with no ``ui.token_file``; a listener
other people can reach must have a token, or the controller refuses to start. Actions (sync, suspend, resume) are
POSTs that also need the CSRF token of this process, which only a page of this dashboard carries.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from urllib.parse import urlsplit

from controller.config import UiConfig
from controller.errors import ControllerError
from controller.outcomes import Reason
from controller.secrets import read_secret_file

SESSION_COOKIE = "controller_session"
CSRF_COOKIE = "controller_csrf"
MIN_TOKEN = 16  # characters: a token someone could guess in a few million tries protects nothing


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
class Access:
    """The access rules of one running dashboard."""

    token: bytes | None
    # a fresh value per process: forms of an older process are refused, and nothing outside a page knows it
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @classmethod
    def of(cls, ui: UiConfig, listen: str) -> Access:
        """The rules for a dashboard on ``listen``; a ControllerError when it would be open to others."""
        token = None
        if ui.token_file is not None:
            token = read_secret_file(ui.token_file, "ui.token_file", Reason.CONFIG_INVALID)
            if len(token) < MIN_TOKEN:
                raise ControllerError(Reason.CONFIG_INVALID, f"ui.token_file {ui.token_file} holds a token of "
                                      f"{len(token)} characters; use at least {MIN_TOKEN} (openssl rand -hex 32)")
        host = listen.rpartition(":")[0]
        if token is None and not is_loopback(host):
            raise ControllerError(Reason.CONFIG_INVALID, f"the dashboard would answer anyone on {listen}: set "
                                  "ui.token_file (or listen on 127.0.0.1, or set ui.enabled: false)")
        return cls(token)

    @property
    def session(self) -> str:
        """The session cookie's value: derived from the token, so a new token ends every session."""
        assert self.token is not None
        return hmac.new(self.token, b"controller dashboard session", "sha256").hexdigest()

    def host_allowed(self, headers: dict[str, str]) -> bool:
        """Without a token, only loopback names may be asked for: a page fetched through another name
        (DNS rebinding: a web site whose name resolves to 127.0.0.1) must not read the dashboard."""
        if self.token is not None:
            return True
        host = headers.get("host", "")
        return is_loopback(host.rpartition(":")[0] if host.count(":") == 1 or "]:" in host else host)

    def bearer(self, headers: dict[str, str]) -> bool:
        """Whether the request carries the token in ``Authorization: Bearer`` (a browser never adds it by itself)."""
        scheme, _, given = headers.get("authorization", "").partition(" ")
        return (self.token is not None and scheme.lower() == "bearer"
                and hmac.compare_digest(given.strip().encode(), self.token))

    def authenticated(self, headers: dict[str, str]) -> bool:
        if self.token is None:
            return True
        return self.bearer(headers) or hmac.compare_digest(cookies(headers).get(SESSION_COOKIE, ""), self.session)

    def login(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.strip().encode(), self.token)

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

    def cookie_headers(self, *, session: bool | None = None) -> tuple[tuple[str, str], ...]:
        """Set-Cookie headers: the CSRF cookie always; the session cookie set (True) or cleared (False)."""
        flags = "Path=/; HttpOnly; SameSite=Strict"
        headers = [("Set-Cookie", f"{CSRF_COOKIE}={self.csrf}; {flags}")]
        if session is True:
            headers.append(("Set-Cookie", f"{SESSION_COOKIE}={self.session}; {flags}"))
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
