"""Every Git host's push webhook, as that host sends and signs it, against a real Listener on 127.0.0.1.

The payloads in tests/data/webhooks are our own, written in the shape each provider documents for a push
(GitHub, GitLab, Gitea/Forgejo and Gogs push events, Bitbucket Data Center's repo:refs_changed, Bitbucket Cloud's
repo:push, Azure DevOps' git.push, and a body for Flux's generic-hmac receiver, which takes anything). The forges
themselves cannot run here; that each accepted delivery wakes a real daemon is tests/test_watch.py's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging

import pytest

from controller.vocabulary import Provider
from controller.web.webhooks import shared_in_clear
from tests.support.webhooks import (
    SECRETS,
    SENDERS,
    delivery,
    exchange,
    listening,
    post,
)

SHA = "4e8d883a12f4c0ffee0ddba11c0ffee0ddba11c0"


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
