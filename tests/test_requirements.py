"""Roles and collections from requirements.yml: installed per revision, cached, refused when unreachable."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import yaml

from controller.ansible.job import job_settings
from controller.ansible.requirements import install_requirements
from controller.config import load_config
from controller.errors import ControllerError
from controller.vocabulary import Reason
from lab.repository import collection_tarball, git, role_remote, write_tree
from tests.conftest import Fleet, write_config
from tests.support.collections import dependent_collections
from tests.support.refusals import assert_refused

SHOUT = '''\
def shout(text):
    return str(text).upper() + "!"


class FilterModule:
    def filters(self):
        return {"shout": shout}
'''
GREETING_TASKS = '''\
- name: Greet, through a filter from the acme.tools collection
  ansible.builtin.copy:
    content: "{{ ('hello from ' ~ inventory_hostname) | acme.tools.shout }}\\n"
    dest: /srv/opt/greeting.txt
    mode: "0644"
'''
GREETING = "/srv/opt/greeting.txt"


def sources(directory: Path) -> tuple[Path, Path]:
    """A role in its own Git remote, and a collection tarball."""
    return role_remote(directory / "greeting.git", {"tasks/main.yml": GREETING_TASKS}), acme_tools(directory)


def acme_tools(directory: Path, filters: str = SHOUT) -> Path:
    """The collection acme.tools 1.0.0 with ``filters`` as its filter plugin, built into a tarball."""
    collection = write_tree(directory / "acme.tools", {
        "galaxy.yml": "namespace: acme\nname: tools\nversion: 1.0.0\nreadme: README.md\nauthors: [lab]\n",
        "README.md": "acme.tools\n", "meta/runtime.yml": "requires_ansible: '>=2.15'\n",
        "plugins/filter/shout.py": filters})
    return collection_tarball(collection, directory)


def requirements(role: Path, tarball: Path, version: str = "v1") -> str:
    return yaml.safe_dump({
        "roles": [{"name": "greeting", "src": f"git+file://{role}", "version": version}],
        "collections": [{"name": str(tarball), "type": "file"}],
    })


def use_them(fleet: Fleet, role: Path, tarball: Path) -> None:
    site = fleet.work / "playbooks/site.yml"
    site.write_text(site.read_text() + "\n- name: Dependencies\n  hosts: web\n  gather_facts: false\n"
                                       "  roles: [greeting]\n")
    fleet.write("requirements.yml", requirements(role, tarball))
    fleet.push("Require a role and a collection")


def cache_listing(cache: Path) -> dict[str, tuple[int, int]]:
    """Every file of the cache with its inode and mtime: any reinstall would change them."""
    return {str(p.relative_to(cache)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in cache.rglob("*") if p.is_file()}


def test_a_role_from_git_and_a_collection_from_a_tarball_are_installed_and_used(converged_app: Fleet) -> None:
    fleet = converged_app
    role, tarball = sources(fleet.root / "deps")
    use_them(fleet, role, tarball)
    done = fleet.controller("sync")
    assert done.returncode == 0, done.stdout + done.stderr
    for host, name in (("h1", "web1.staging"), ("h2", "web2.staging")):
        assert fleet.host_file(host, GREETING).read_text() == f"HELLO FROM {name.upper()}!\n"
    cache = fleet.state / "cache/requirements"
    assert cache.stat().st_mode & 0o777 == 0o700
    assert len([p for p in cache.iterdir()]) == 1
    before = cache_listing(cache)

    # the sources go away: the same requirements come from the cache, untouched
    shutil.rmtree(role)
    tarball.unlink()
    fleet.host_file("h1", GREETING).write_text("edited by hand\n")
    again = fleet.controller("sync", "--progress")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "==> 2 requirement(s): cached" in again.stderr
    assert fleet.host_file("h1", GREETING).read_text() == "HELLO FROM WEB1.STAGING!\n"
    assert cache_listing(cache) == before


def test_the_second_install_of_the_same_requirements_is_a_copy_under_a_second(fleet: Fleet, tmp_path: Path) -> None:
    role, tarball = sources(tmp_path / "deps")
    project = tmp_path / "project"
    project.mkdir()
    (project / "requirements.yml").write_text(requirements(role, tarball))
    (project / "ansible.cfg").write_text("[defaults]\nroles_path = roles\n")
    config = load_config(fleet.config)
    steps: list[str] = []

    def install(run: str) -> tuple[float, dict[str, str]]:
        private = tmp_path / run
        private.mkdir()
        job = job_settings(config, project, private)
        started = time.monotonic()
        env = install_requirements(config, project, private, job, steps.append).env
        return time.monotonic() - started, env

    first, env = install("first")
    assert (tmp_path / "first/requirements/roles/greeting/tasks/main.yml").is_file()
    assert env["ANSIBLE_COLLECTIONS_PATH"].split(":")[0] == str(tmp_path / "first/requirements/collections")
    assert env["ANSIBLE_ROLES_PATH"].split(":")[:2] == [str(tmp_path / "first/requirements/roles"),
                                                         str(project / "roles")]
    shutil.rmtree(role)  # no source to reach: a second ansible-galaxy run would fail
    tarball.unlink()
    second, _ = install("second")
    assert (tmp_path / "second/requirements/collections/ansible_collections/acme/tools").is_dir()
    assert steps == ["installing 2 requirement(s) with ansible-galaxy", "2 requirement(s): cached"]
    assert second < 1, f"a cache hit took {second:.2f}s (the install {first:.2f}s)"


@pytest.mark.parametrize("broken", ["unreachable", "unknown-version"])
def test_a_requirement_that_cannot_be_installed_stops_the_run_before_anything_is_applied(
        converged_app: Fleet, broken: str) -> None:
    fleet = converged_app
    converged = git(fleet.work, "rev-parse", "HEAD")
    role, tarball = sources(fleet.root / "deps")
    use_them(fleet, role, tarball)
    assert fleet.controller("sync").returncode == 0
    good = git(fleet.work, "rev-parse", "HEAD")
    if broken == "unreachable":
        fleet.write("requirements.yml", requirements(fleet.root / "gone.git", tarball))
        needle = "does not appear to be a git repository"
    else:
        fleet.write("requirements.yml", requirements(role, tarball, version="v9"))
        needle = "v9"
    site = fleet.work / "roles/app/defaults/main.yml"
    site.write_text(site.read_text().replace('app_version: "1.0.0"', 'app_version: "9.9.9"'))
    fleet.push("Broken requirement")
    assert_refused(fleet, ("sync",), "RequirementsFailed", "requirements.yml: role greeting could not be installed",
                   needle)
    assert all(r["revision"] in (converged, good) or r["outcome"] == "failed" for r in fleet.runs())


def test_an_unreachable_galaxy_server_is_named_in_one_line(fleet: Fleet, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "collections").mkdir(parents=True)
    (project / "collections/requirements.yml").write_text("collections:\n  - name: community.general\n")
    write_config(fleet, galaxy={"server": "http://127.0.0.1:9/api/", "timeout": "30s"})
    config = load_config(fleet.config)
    with pytest.raises(ControllerError) as refused:
        install_requirements(config, project, tmp_path, job_settings(config, project, tmp_path), lambda _: None)
    assert refused.value.reason is Reason.REQUIREMENTS_FAILED
    assert str(refused.value).startswith("collections/requirements.yml: collection community.general could not "
                                         "be installed: ")
    assert "http://127.0.0.1:9/api/" in str(refused.value) and "\n" not in str(refused.value)
    assert not list((fleet.state / "cache/requirements").iterdir())  # nothing half-installed is cached


def test_a_tarball_rebuilt_in_the_repository_is_a_new_set(fleet: Fleet, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "requirements.yml").parent.mkdir(parents=True)
    (project / "requirements.yml").write_text("collections:\n  - {name: dist/acme-tools-1.0.0.tar.gz, type: file}\n")
    config = load_config(fleet.config)
    steps: list[str] = []
    for build in ("first", "second"):
        # the same name and version, other content: what a rebuild committed at the same path looks like
        tarball = acme_tools(tmp_path / build, SHOUT + f"# {build} build\n")
        (project / "dist").mkdir(exist_ok=True)
        (project / "dist" / tarball.name).write_bytes(tarball.read_bytes())
        private = tmp_path / f"run-{build}"
        private.mkdir()
        install_requirements(config, project, private, job_settings(config, project, private), steps.append)
        installed = private / "requirements/collections/ansible_collections/acme/tools/plugins/filter/shout.py"
        assert installed.read_text().endswith(f"# {build} build\n")
    assert steps == ["installing 1 requirement(s) with ansible-galaxy"] * 2
    assert len(list((fleet.state / "cache/requirements").iterdir())) == 2


def test_vendored_tarballs_resolve_among_themselves_offline_and_a_missing_one_is_named(fleet: Fleet,
                                                                                      tmp_path: Path) -> None:
    built = dependent_collections(tmp_path / "built")
    project = tmp_path / "project"
    (project / "vendor").mkdir(parents=True)
    for tarball in built.values():
        shutil.copy(tarball, project / "vendor")
    # a Galaxy server that does not answer: only an install that asks no server can succeed
    write_config(fleet, galaxy={"server": "http://127.0.0.1:9/api/"})
    config = load_config(fleet.config)

    def install(*names: str) -> Path:
        (project / "requirements.yml").write_text(yaml.safe_dump({"collections": [
            {"name": f"vendor/{built[name].name}", "type": "file"} for name in names]}))
        private = tmp_path / "-".join(names)
        private.mkdir()
        install_requirements(config, project, private, job_settings(config, project, private), lambda _: None)
        return private / "requirements/collections/ansible_collections/acme"

    installed = install("app", "base")  # dependents first, as a requirements file may well list them
    assert (installed / "app/plugins/filter/app.py").is_file() and (installed / "base/plugins/filter/base.py").is_file()
    with pytest.raises(ControllerError) as refused:
        install("app")
    assert refused.value.reason is Reason.REQUIREMENTS_FAILED
    assert str(refused.value) == (
        "requirements.yml: collection acme.base >=1.0.0 could not be installed: acme.app 1.0.0 requires it, and "
        "neither requirements.yml nor the listed tarballs and directories (offline) provides it")
