"""The decrypted workspace and the Ansible job, made only when a playbook is about to run.

A verify that finds every host as its manifest says runs no playbook, so it never decrypts a
secret or starts Ansible; everything else prepares before its first check, as always: SOPS files
decrypted in place, Ansible Vault values learnt for masking, the job settings, the requirements
(roles, collections) installed, and each app's syntax check once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.ansible_config import Job, job_settings
from controller.apps import App
from controller.config import Config
from controller.redact import Redactor
from controller.requirements import install_requirements
from controller.results import Progress
from controller.runner import syntax_check
from controller.secrets import decrypt_in_place, find_encrypted
from controller.vault import learn_vaulted
from controller.workspace import Workspace


@dataclass
class Preparation:
    """What a playbook run needs from the workspace; made once, on first use."""

    config: Config
    space: Workspace
    progress: Progress
    _ready: tuple[Job, Redactor] | None = None
    _gated: set[str] = field(default_factory=set)

    def ready(self, app: App) -> tuple[Job, Redactor]:
        """The job and the redactor, with the secrets decrypted and ``app`` through its syntax check."""
        if self._ready is None:
            project = self.space.project
            encrypted = find_encrypted(project)
            self.progress.step(f"decrypting {len(encrypted)} SOPS file(s) into {self.space.root}")
            redactor = decrypt_in_place(project, encrypted, self.config.sops.age_key_file)
            redactor = redactor + learn_vaulted(project, self.config.ansible)
            job = job_settings(self.config, project, self.space.job)
            for notice in job.notices:
                self.progress.notice(notice)
            job = install_requirements(self.config, project, self.space.job, job, self.progress.step)
            self._ready = (job, redactor)
        job, redactor = self._ready
        if app.name not in self._gated:
            self.progress.step(f"syntax check of {app.name}: {app.playbook}")
            syntax_check(app, self.space.project, job, redactor)
            self._gated.add(app.name)
        return job, redactor
