"""The decrypted workspace and the Ansible job, made only when a playbook is about to run.

A verify that finds every host as its manifest says runs no playbook, so it never decrypts a
secret or starts Ansible; everything else prepares before its first check, as always: SOPS files
decrypted in place, Ansible Vault values learnt for masking, the job settings, the requirements
(roles, collections) installed, and each app's syntax check once (not again at inputs that passed). In a run
of one app, the syntax check is the first pass of the ansible-playbook process that then checks and applies it,
kept waiting here until the app's run takes it.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from controller import memo
from controller.ansible.job import Job, job_settings
from controller.ansible.requirements import install_requirements
from controller.ansible.runner import Playbook, syntax_check
from controller.config import Config
from controller.errors import ControllerError
from controller.interrupt import Cancel
from controller.run.results import Progress
from controller.secrets.redact import Redactor
from controller.secrets.sops import decrypt_in_place, find_encrypted
from controller.secrets.vault import learn_vaulted
from controller.secrets.workspace import Workspace
from controller.source.apps import App, load_apps
from controller.source.git import Source
from controller.verify.manifest import inputs_digest
from controller.vocabulary import Phase


@dataclass
class Preparation:
    """What a playbook run needs from the workspace; made once, on first use."""

    config: Config
    space: Workspace
    progress: Progress
    source: Source
    digests: Mapping[str, str]  # each app's inputs digest (manifest.inputs_digest)
    # revisions the hosts still run: their secrets are on the hosts and in a check's "before" side
    previous: frozenset[str] = frozenset()
    # a run of one app: its syntax check runs as the first pass of its playbook's process (stopped by this)
    parking: Cancel | None = None
    _parked: dict[str, Playbook] = field(default_factory=dict)
    _redactor: Redactor | None = None
    _job: Job | None = None
    _gated: set[str] = field(default_factory=set)
    _at: dict[tuple[str, frozenset[str]], tuple[Preparation, dict[str, App]]] = field(default_factory=dict)
    # apps that run at once (ansible.parallel_apps) share it: what it makes on first use is made once
    _making: threading.RLock = field(default_factory=threading.RLock)

    def at(self, sha: str, previous: frozenset[str] = frozenset()) -> tuple[Preparation, dict[str, App]]:
        """The same for revision ``sha`` (a preview's baseline: what the hosts run now; a pin), unpacked beside
        this one in the same wiped workspace, with that revision's apps by name; ``previous`` as above."""
        with self._making:  # each set of earlier revisions masks its own secrets: one preparation per set
            if (sha, previous) not in self._at:
                space = Workspace(self.space.root / f"at-{sha[:12]}-{len(self._at)}").make()
                self.source.extract(sha, space.project)
                apps = {app.name: app for app in load_apps(space.project)}
                digests = {name: inputs_digest(self.config, sha, app, space.project) for name, app in apps.items()}
                self._at[sha, previous] = (Preparation(self.config, space, self.progress, self.source, digests,
                                                       previous), apps)
            return self._at[sha, previous]

    def redactor(self) -> Redactor:
        """What masks every secret of the revision (and of the revisions the hosts still run): the SOPS files
        decrypted in place, the Vault values learnt."""
        with self._making:
            if self._redactor is None:
                project = self.space.project
                encrypted = find_encrypted(project)
                self.progress.step(f"decrypting {len(encrypted)} SOPS file(s) into {self.space.root}")
                redactor = decrypt_in_place(project, encrypted, self.config.sops.age_key_file)
                self._redactor = redactor + learn_vaulted(project, self.config.ansible) + self._earlier_secrets()
            return self._redactor

    def ready(self, app: App) -> tuple[Job, Redactor]:
        """The job and the redactor, with the secrets decrypted and ``app`` through its syntax check."""
        with self._making:
            redactor = self.redactor()
            if self._job is None:
                project = self.space.project
                job = job_settings(self.config, project, self.space.job)
                for notice in job.notices:
                    self.progress.notice(notice)
                self._job = install_requirements(self.config, project, self.space.job, job, self.progress.step)
            job = self._job
            if app.name not in self._gated:
                # the inputs digest covers the revision, the bastion config (so the requirements) and the versions
                digest = self.digests[app.name]
                if memo.known(self.config, "syntax-checked", digest):
                    self.progress.step(f"syntax check of {app.name}: passed before at the same inputs")
                else:
                    self.progress.step(f"syntax check of {app.name}: {app.playbook}")
                    if self.parking is not None and job.nodes is None:
                        # where the app's run would start it (AppRun._play, alone in its run); parked first, so
                        # that close() ends it whatever cuts the syntax check short
                        playbook = self._parked[app.name] = Playbook(app, self.space.project,
                                                                     self.space.runner / Phase.CHECK, job,
                                                                     redactor=redactor, cancel=self.parking)
                        playbook.syntax_check()
                    else:
                        syntax_check(app, self.space.project, job, redactor)
                    memo.remember(self.config, "syntax-checked", digest)
                self._gated.add(app.name)
            return job, redactor

    def parked(self, app: App) -> Playbook | None:
        """The process ``app``'s syntax check ran in, waiting for its check; taken once, to play ``app`` as the run
        has it (within --limit, which the gate's does not know)."""
        with self._making:
            playbook = self._parked.pop(app.name, None)
        if playbook is not None:
            playbook.app = app
        return playbook

    def close(self) -> None:
        """End the processes that no run took (the app ran at another revision, or did not run)."""
        with self._making:
            parked, self._parked = list(self._parked.values()), {}
        for playbook in parked:
            playbook.close()

    def _earlier_secrets(self) -> Redactor:
        """The SOPS values of the revisions the hosts still run, masked too: after a secret is rotated, the
        diff of the file that holds it shows the old value on its "before" side."""
        learnt = Redactor()
        for sha in sorted(self.previous):
            earlier = self.space.root / f"earlier-{sha[:12]}"
            try:
                earlier.mkdir(mode=0o700)
                self.source.extract(sha, earlier)
                learnt = learnt + decrypt_in_place(earlier, find_encrypted(earlier), self.config.sops.age_key_file)
            except ControllerError as error:
                self.progress.notice(f"the secrets of {sha[:12]}, which some hosts still run, could not be read "
                                     f"({error.message}); a diff may show them where the hosts still have them")
            finally:
                shutil.rmtree(earlier, ignore_errors=True)
        return learnt
