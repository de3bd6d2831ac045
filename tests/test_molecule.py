"""Each role's molecule scenario, on real lab hosts through molecule's default driver."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import BIN, ROOT


@pytest.mark.parametrize("scenario", ["base", "app"])
def test_molecule_scenario_passes(scenario: str) -> None:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "ANSIBLE_FORCE_COLOR": "0", "NO_COLOR": "1"}
    done = subprocess.run([str(BIN / "molecule"), "test", "-s", scenario], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    for action in ("create", "converge", "idempotence", "check", "verify", "destroy"):
        assert f"{action}: Executed: Successful" in done.stdout + done.stderr
