"""Change impact on a repository shaped as teams shape theirs: site.yml importing a playbook per tier, roles
from two roles_path entries, a role pulled in by another's meta dependencies, include_role inside blocks,
imported task files, a role from a collection. Pure reading of files: no host is needed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controller.source.apps import App
from controller.source.impact import Impact

APPS = (App("web", "playbooks/web.yml", "inventories/web"), App("db", "playbooks/db.yml", "inventories/db"),
        App("monitoring", "playbooks/monitoring.yml", "inventories/prod"))
FILES = {
    "ansible.cfg": "[defaults]\nroles_path = ./roles:./vendor/roles\n",
    "site.yml": [{"import_playbook": "playbooks/web.yml"}, {"ansible.builtin.import_playbook": "playbooks/db.yml"}],
    "playbooks/web.yml": [{"hosts": "web", "become": True,
                           "roles": ["common", {"role": "nginx", "tags": ["web"]}, "acme.web.hardening"]}],
    "playbooks/db.yml": [{"hosts": "db", "roles": [{"name": "common"}, "postgresql"]}],
    "playbooks/monitoring.yml": [{
        "hosts": "all",
        "pre_tasks": [{"name": "Agent", "import_tasks": "../tasks/agent.yml"}],
        "tasks": [{"block": [{"name": "Exporter", "ansible.builtin.include_role": {"name": "node_exporter"}}],
                   "rescue": [{"debug": {"msg": "no exporter"}}]}]}],
    "tasks/agent.yml": [{"name": "Install the agent", "ansible.builtin.package": {"name": "agent"}}],
    "roles/common/tasks/main.yml": [{"name": "Users", "ansible.builtin.import_tasks": "users.yml"}],
    "roles/common/tasks/users.yml": [{"user": {"name": "ops"}}],
    "roles/nginx/meta/main.yml": {"galaxy_info": {"author": "ops", "license": "MIT"},
                                  "dependencies": [{"role": "tls", "vars": {"tls_port": 443}}]},
    "roles/nginx/tasks/main.yml": [{"template": {"src": "nginx.conf.j2", "dest": "/etc/nginx/nginx.conf"}}],
    "roles/nginx/templates/nginx.conf.j2": "worker_processes auto;\n",
    "vendor/roles/tls/tasks/main.yml": [{"copy": {"src": "dhparam.pem", "dest": "/etc/ssl/dhparam.pem"}}],
    "vendor/roles/tls/files/dhparam.pem": "-----BEGIN DH PARAMETERS-----\n",
    "roles/postgresql/tasks/main.yml": [{"apt": {"name": "postgresql"}}],
    "roles/node_exporter/tasks/main.yml": [{"apt": {"name": "prometheus-node-exporter"}}],
    "roles/retired/tasks/main.yml": [{"debug": {"msg": "no playbook uses me"}}],
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name, content in FILES.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return tmp_path


def reached(project: Path, *changed: str) -> set[str]:
    impact = Impact(APPS, project)
    return {app.name for app in APPS if impact.reaches(app, changed)}


@pytest.mark.parametrize(("changed", "apps"), [
    ("roles/postgresql/tasks/main.yml", {"db"}),
    ("roles/common/tasks/users.yml", {"web", "db"}),
    ("roles/nginx/templates/nginx.conf.j2", {"web"}),
    ("vendor/roles/tls/files/dhparam.pem", {"web"}),         # a dependency in meta/main.yml, second roles_path
    ("roles/node_exporter/tasks/main.yml", {"monitoring"}),  # include_role inside a block
    ("tasks/agent.yml", {"monitoring"}),                    # imported beside the playbook
    ("playbooks/db.yml", {"db"}),
    ("roles/retired/tasks/main.yml", set()),               # a role no app uses
    ("inventories/db/group_vars/all.yml", {"db"}),
    ("site.yml", {"web", "db", "monitoring"}),              # no app's playbook: who knows who reads it
    ("ansible.cfg", {"web", "db", "monitoring"}),
    ("requirements.yml", {"web", "db", "monitoring"}),
    ("collections/ansible_collections/acme/web/roles/hardening/tasks/main.yml", {"web", "db", "monitoring"}),
    ("playbooks/files/banner", {"web", "db", "monitoring"}),
])
def test_a_change_reaches_the_apps_that_use_it(project: Path, changed: str, apps: set[str]) -> None:
    assert reached(project, changed) == apps


def test_a_commit_reaches_the_union_of_what_its_files_reach(project: Path) -> None:
    assert reached(project, "roles/postgresql/tasks/main.yml", "inventories/web/hosts.yml") == {"web", "db"}
    assert reached(project) == set()


@pytest.mark.parametrize("dynamic", [
    [{"include_role": {"name": "{{ exporter_role }}"}}],
    [{"include_tasks": "{{ ansible_os_family }}.yml"}],
])
def test_what_cannot_be_followed_reaches_every_app_but_other_inventories_do_not(project: Path,
                                                                                dynamic: list[object]) -> None:
    (project / "roles/postgresql/tasks/main.yml").write_text(yaml.safe_dump(dynamic))
    assert reached(project, "roles/nginx/templates/nginx.conf.j2") == {"web", "db", "monitoring"}
    assert reached(project, "inventories/db/hosts.yml") == {"db"}


def test_a_playbook_that_does_not_parse_reaches_every_app(project: Path) -> None:
    (project / "playbooks/monitoring.yml").write_text("- hosts: all\n  tasks: [\n")
    assert reached(project, "roles/postgresql/tasks/main.yml") == {"web", "db", "monitoring"}


def test_a_role_s_file_imported_by_path_reaches_the_app_that_imports_it(project: Path) -> None:
    monitoring = yaml.safe_load((project / "playbooks/monitoring.yml").read_text())
    monitoring[0]["tasks"].append({"import_tasks": "../roles/retired/tasks/main.yml"})
    (project / "playbooks/monitoring.yml").write_text(yaml.safe_dump(monitoring))
    assert reached(project, "roles/retired/tasks/main.yml") == {"monitoring"}


def test_roles_are_found_where_ansible_looks_first_and_by_path_from_the_playbook(project: Path) -> None:
    # roles/ beside the playbook comes before roles_path: this common shadows roles/common for web and db
    shadow = project / "playbooks/roles/common/tasks/main.yml"
    shadow.parent.mkdir(parents=True)
    shadow.write_text(yaml.safe_dump([{"debug": {"msg": "the one Ansible runs"}}]))
    assert reached(project, "playbooks/roles/common/tasks/main.yml") == {"web", "db"}
    assert reached(project, "roles/common/tasks/users.yml") == set()
    # a role named by its path, in a task file one directory down: resolved from the playbook's directory
    (project / "tasks/agent.yml").write_text(yaml.safe_dump([{"include_role": {"name": "../roles/postgresql"}}]))
    assert reached(project, "roles/postgresql/tasks/main.yml") == {"db", "monitoring"}
    (project / "tasks/agent.yml").write_text(yaml.safe_dump([{"include_role": {"name": "../roles/nowhere"}}]))
    assert reached(project, "roles/postgresql/tasks/main.yml") == {"web", "db", "monitoring"}
