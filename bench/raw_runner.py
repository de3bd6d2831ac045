"""Plain ansible-runner with exactly the controller's settings, for the overhead comparison.

Usage: python -m bench.raw_runner CONFIG PROJECT  (PROJECT: a checkout with its secrets in plain text)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from ansible_runner import Runner, RunnerConfig

from controller.ansible.job import job_settings
from controller.config import load_config
from controller.source.apps import load_apps


def main(config_path: str, project_dir: str) -> int:
    config = load_config(Path(config_path))
    project = Path(project_dir)
    scratch = Path(tempfile.mkdtemp(prefix="bench-raw-", dir=config.workspace_dir))
    try:
        job = job_settings(config, project, scratch)
        [app] = load_apps(project)
        runner_config = RunnerConfig(
            private_data_dir=str(scratch / "runner"), project_dir=str(project), playbook=app.playbook,
            inventory=str(project / app.inventory), cmdline=f"--check --diff {job.cmdline}", envvars=job.env,
            ident="check",
            quiet=True, suppress_output_file=True, suppress_ansible_output=True)
        runner_config.prepare()
        runner = Runner(runner_config, event_handler=lambda event: False)
        runner.run()
        return int(runner.rc or 0)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
