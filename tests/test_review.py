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
from tests.conftest import BIN, Fleet, git

PREVIEW = Path(__file__).resolve().parent.parent / "deploy" / "controller-preview"


def ask_for_preview(fleet: Fleet, ref: str) -> subprocess.CompletedProcess[str]:
    """What sshd runs for CI's key: the forced command, with what CI asked for in SSH_ORIGINAL_COMMAND."""
    env = {"PATH": os.environ["PATH"], "SSH_ORIGINAL_COMMAND": ref, "CONTROLLER": str(BIN / "controller"),
           "CONTROLLER_CONFIG": str(fleet.config)}
    return subprocess.run([str(PREVIEW)], env=env, capture_output=True, text=True, timeout=300, check=False)


def test_a_branch_that_changes_a_template_on_two_hosts_is_previewed_for_review(converged: Fleet) -> None:
    status = converged.controller("status", "--json").stdout
    git(converged.work, "checkout", "-q", "-b", "pr-12")
    template = converged.work / "roles/app/templates/app.yml.j2"
    template.write_text(template.read_text().replace("database:\n", "database:\n  pool: 8\n"))
    tasks = converged.work / "roles/app/tasks/main.yml"
    tasks.write_text(tasks.read_text() + "\n- name: Warm the cache\n  ansible.builtin.command: /bin/true\n")
    pr = converged.push("Pool the database connections", ref="pr-12")
    git(converged.work, "checkout", "-q", "main")

    done = ask_for_preview(converged, pr)
    assert done.returncode == 2, done.stderr
    comment = done.stdout
    assert comment.startswith(f"### GitOps preview of `{pr[:12]}` Pool the database connections")
    assert "**Verdict:** 2 host(s) would change; 2 task(s) check mode cannot verify." in comment
    assert "| would change | web1.staging, web2.staging |" in comment
    for host in ("web1.staging", "web2.staging"):
        assert f"<summary>staging / {host}: app : Render the application configuration</summary>" in comment
    assert "+  pool: 8" in comment
    assert '   password: "[redacted]"' in comment  # the diff's context, masked
    assert converged.secrets["staging"] not in comment
    assert "- `app : Warm the cache`" in comment
    assert converged.controller("status", "--json").stdout == status  # a preview is never the app's state

    out = converged.root / "preview.md"
    written = converged.controller("check", "--revision", "pr-12", "--format", "markdown", "--output", str(out))
    assert written.returncode == 2 and written.stdout == ""
    assert out.read_text().split("<details>")[0] == comment.split("<details>")[0]

    refused = ask_for_preview(converged, "main; rm -rf /")
    assert refused.returncode == 64 and "give one commit SHA or branch name" in refused.stderr
    assert ask_for_preview(converged, "--help").returncode == 64
    assert json.loads(converged.controller("status", "--json").stdout) == json.loads(status)


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
