"""The pull-request preview: a Markdown review comment, through the forced SSH command CI uses."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from controller.ansible.results import TaskResult
from controller.report.review import review_markdown
from controller.run.results import AppResult, Request, Result
from controller.source.revision import Revision
from controller.verify.drift import HostReport, Report
from controller.vocabulary import Kind, Mode, Outcome, TaskStatus
from tests.conftest import APP_YML, BIN, VERSION, Fleet, bump_version, git

PREVIEW = Path(__file__).resolve().parent.parent / "deploy" / "controller-preview"


def ask_for_preview(fleet: Fleet, ref: str) -> subprocess.CompletedProcess[str]:
    """What sshd runs for CI's key: the forced command, with what CI asked for in SSH_ORIGINAL_COMMAND."""
    env = {"PATH": os.environ["PATH"], "SSH_ORIGINAL_COMMAND": ref, "CONTROLLER": str(BIN / "controller"),
           "CONTROLLER_CONFIG": str(fleet.config)}
    return subprocess.run([str(PREVIEW)], env=env, capture_output=True, text=True, timeout=300, check=False)


def test_a_branch_that_changes_a_template_on_two_hosts_is_previewed_for_review(converged_app: Fleet) -> None:
    status = converged_app.controller("status", "--json").stdout
    git(converged_app.work, "checkout", "-q", "-b", "pr-12")
    template = converged_app.work / "roles/app/templates/app.yml.j2"
    template.write_text(template.read_text().replace("database:\n", "database:\n  pool: 8\n"))
    tasks = converged_app.work / "roles/app/tasks/main.yml"
    tasks.write_text(tasks.read_text() + "\n- name: Warm the cache\n  ansible.builtin.command: /bin/true\n")
    pr = converged_app.push("Pool the database connections", ref="pr-12")
    git(converged_app.work, "checkout", "-q", "main")
    converged_app.host_file("h2", VERSION).write_text("0.9.9-hotfix\n")  # by hand, before the pull request

    done = ask_for_preview(converged_app, pr)
    assert done.returncode == 2, done.stderr
    comment = done.stdout
    assert comment.startswith(f"### GitOps preview of `{pr[:12]}` Pool the database connections")
    assert "**Verdict:** 2 host(s) would change; 2 task(s) check mode cannot verify." in comment
    # the warning a reviewer must read is in the comment, not only on the bastion's stderr
    assert f"> **Note:** previewing {pr[:12]}, which no signature check vouches for (source.verify is off)" in comment
    assert "| would change | web1.staging, web2.staging |" in comment
    for host in ("web1.staging", "web2.staging"):
        assert f"<summary>staging / {host}: app : Render the application configuration</summary>" in comment
    assert ("Files this revision changes since the applied one (2): `roles/app/tasks/main.yml`, "
            "`roles/app/templates/app.yml.j2`") in comment
    # the hand edit is not the pull request's doing: the applied revision's own check finds it too
    assert "| already drifted, not by this change | web2.staging |" in comment
    hand = ("<summary>staging / web2.staging: app : Record the deployed version "
            "(already drifted, not by this change)</summary>")
    assert hand in comment and comment.index(hand) > comment.rindex("Render the application configuration")
    assert "-0.9.9-hotfix" in comment and "atime" not in comment and "mtime" not in comment
    assert "+  pool: 8" in comment
    assert '   password: "[redacted]"' in comment  # the diff's context, masked
    assert converged_app.secrets["staging"] not in comment
    assert "- `app : Warm the cache`" in comment
    assert converged_app.controller("status", "--json").stdout == status  # a preview is never the app's state

    out = converged_app.root / "preview.md"
    written = converged_app.controller("check", "--revision", "pr-12", "--format", "markdown", "--output", str(out),
                                   "--ignore-drift")
    assert written.returncode == 2 and written.stdout == ""
    kept = out.read_text()
    assert kept.split("<details>")[0] == comment.split("<details>")[0].replace(
        "| already drifted, not by this change | web2.staging |\n", "")
    assert "already drifted" not in kept and "0.9.9-hotfix" not in kept

    refused = ask_for_preview(converged_app, "main; rm -rf /")
    assert refused.returncode == 64 and "give one commit SHA or branch name" in refused.stderr
    assert ask_for_preview(converged_app, "--help").returncode == 64
    assert json.loads(converged_app.controller("status", "--json").stdout) == json.loads(status)


def test_a_large_preview_is_cut_with_a_line_saying_what_was_left_out() -> None:
    hosts = tuple(HostReport(f"web{i}", TaskStatus.CHANGED, 1, 0) for i in range(40))
    tasks = tuple(TaskResult(f"web{i}", "app : Render", "template", TaskStatus.CHANGED, "-a\n+b\n" * 400)
                  for i in range(40))
    app = AppResult("staging", "apply", 7, Outcome.DRIFTED, None, "drifted", Report(hosts, tasks),
                    previous="1" * 40, kind=Kind.PREVIEW)
    result = Result(Request(Mode.CHECK, revision="2" * 40), Revision("2" * 40, "Big", "ann", "now"), (app,),
                    kind=Kind.PREVIEW)
    comment = review_markdown(result, limit=20_000)
    assert len(comment) <= 20_000
    assert comment.count("<details>") < 40
    assert f"{40 - comment.count('<details>')} of 40 diffs left out" in comment
    assert "`controller show 7`" in comment
    assert "| would change | " + ", ".join(f"web{i}" for i in range(40)) + " |" in comment


def test_the_verdict_counts_machines_not_app_host_pairs() -> None:
    def app(name: str, hosts: tuple[str, ...], status: TaskStatus) -> AppResult:
        report = Report(tuple(HostReport(h, status, 1, 0) for h in hosts),
                        tuple(TaskResult(h, "Render", "template", status, "-a\n+b\n") for h in hosts))
        return AppResult(name, "apply", 1, Outcome.DRIFTED, None, "", report, previous="1" * 40, kind=Kind.PREVIEW)

    # two apps on the same two servers, a third app on one of them and a fourth server
    apps = (app("system", ("web1", "web2"), TaskStatus.CHANGED), app("site", ("web1", "web2"), TaskStatus.CHANGED),
            app("cron", ("web2", "db1"), TaskStatus.CHANGED), app("db", ("db1",), TaskStatus.UNREACHABLE))
    result = Result(Request(Mode.CHECK, revision="2" * 40), Revision("2" * 40, "PR", "ann", "now"), apps,
                    kind=Kind.PREVIEW)
    comment = review_markdown(result, notes=["a note", "a note"])
    assert "**Verdict:** 3 host(s) would change; 1 host(s) would fail or could not be checked." in comment
    assert comment.count("> **Note:** a note") == 1


def test_a_saved_plan_is_applied_only_while_the_fleet_still_matches_it(converged_app: Fleet) -> None:
    sha = bump_version(converged_app, "3.0.0")
    plan = converged_app.root / "plan.json"
    saved = converged_app.controller("check", "--save-plan", str(plan))
    assert saved.returncode == 2 and f"saved to {plan}" in saved.stderr, saved.stderr
    assert json.loads(plan.read_text())["revision"] == sha
    assert "3.0.0" not in plan.read_text()  # digests of the diffs, never their text

    # a hand edit after the review: the check differs from the plan, so nothing is applied
    config = converged_app.host_file("h1", APP_YML)
    reviewed = config.read_text()
    config.write_text(reviewed.replace("workers: 2", "workers: 64"))
    code, stale = converged_app.controller_json("sync", "--plan", str(plan))
    [app] = stale["apps"]
    assert code == 1 and app["reason"] == "PlanStale", app
    assert "web1.staging would now change 'app : Render the application configuration'" in app["message"]
    assert converged_app.host_file("h2", VERSION).read_text() == "1.0.0\n"  # not applied anywhere

    # put back as reviewed: the plan holds again, and is applied
    config.write_text(reviewed)
    applied = converged_app.controller("sync", "--plan", str(plan))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert converged_app.host_file("h2", VERSION).read_text() == "3.0.0\n"

    # the branch moved on: the plan is of another revision
    bump_version(converged_app, "3.0.1")
    moved = converged_app.controller("sync", "--plan", str(plan))
    assert moved.returncode == 1 and f"the plan is for {sha[:12]}" in moved.stderr, moved.stderr
    assert converged_app.host_file("h2", VERSION).read_text() == "3.0.0\n"
    plan.write_text("{not json")
    broken = converged_app.controller("sync", "--plan", str(plan))
    assert broken.returncode == 1 and broken.stderr.count("\n") == 1 and "not a plan" in broken.stderr
    assert converged_app.controller("sync", "--plan", str(plan), "--force").returncode == 64  # a usage error
