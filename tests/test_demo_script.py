"""`make demo`'s script, not run (CI leaves the demo out): every `controller` line it runs parses, names an app
of the example, and expects an exit code its command documents."""

from __future__ import annotations

import re
import shlex

import click
import pytest
import yaml

from controller.cli import cli
from controller.vocabulary import ExitCode
from tests.conftest import ROOT

EXPECT = re.compile(r"^expect (\d+) controller (.+)$")


def demo_commands() -> list[tuple[int, list[str]]]:
    """Each ``expect CODE controller ARGS...`` line of demo/run.sh: the code and the arguments."""
    lines = (ROOT / "demo/run.sh").read_text().splitlines()
    return [(int(m[1]), shlex.split(m[2])) for m in map(EXPECT.match, lines) if m]


def parsed(args: list[str]) -> tuple[click.Command, click.Context]:
    """The subcommand ``controller ARGS...`` names and its arguments as click parses them, without running it; a
    usage error raises."""
    with click.Context(cli) as group:
        name, command, rest = cli.resolve_command(group, args)
        assert command is not None and name is not None, args
        return command, command.make_context(name, rest, parent=group)


def test_every_controller_line_of_the_demo_parses_names_a_declared_app_and_expects_a_documented_code() -> None:
    commands = demo_commands()
    assert len(commands) >= 20, commands  # the script's shape: a line per step
    apps = {app["name"] for app in yaml.safe_load((ROOT / "gitops.yml").read_text())["apps"]}
    used: set[str] = set()
    for code, args in commands:
        command, context = parsed(args)
        # 0, or a code the command's --help lists (sync, check, verify, rollback: EXIT_CODES)
        assert code == ExitCode.OK or f"\n  {code:<3} " in (command.epilog or ""), (code, args)
        app = context.params.get("app")
        assert app is None or app in apps, (args, apps)
        used.add(app or "")
    assert {"staging", "staging-system", "production"} <= used  # the apps the demo's story is about


def test_a_line_the_cli_would_refuse_is_caught() -> None:
    with pytest.raises(click.UsageError):
        parsed(["sync", "--no-such-flag"])
