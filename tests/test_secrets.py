"""SOPS secrets of every format reach the hosts literally, and nothing else: not output, store, disk or argv."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from controller.errors import ControllerError
from controller.secrets.sops import decrypt_in_place, literal, sops_binary, sops_format
from lab import Lab
from lab.repository import AgeKey, git, make_age_key, sops_encrypt
from tests.conftest import PLAINTEXTS, TEST_PREFIX, VERSION, Fleet, build_fleet, bump_version, secret
from tests.support.leaks import files_containing
from tests.support.processes import ProcWatch

DEST = "/srv/opt/secrets"
GROUP_VARS = "inventories/staging/group_vars/all"
ROLE = "roles/secretfiles"
# rules for the formats the example .sops.yaml does not cover, and one binary file
EXTRA_RULES = """\
  - path_regex: \\.sops\\.(json|env|ini)$
    age: {recipient}
  - path_regex: {role}/files/license\\.key$
    age: {recipient}
"""
TASKS = f"""\
- name: Create the secrets directory
  ansible.builtin.file: {{path: {DEST}, state: directory, mode: "0700"}}
- name: Render the YAML and JSON secrets
  ansible.builtin.template: {{src: secrets.conf.j2, dest: {DEST}/secrets.conf, mode: "0600"}}
- name: Install the env file
  ansible.builtin.copy: {{src: app.sops.env, dest: {DEST}/app.env, mode: "0600"}}
- name: Install a value from the ini file
  ansible.builtin.copy:
    content: "{{{{ lookup('ini', 'password section=db file=app.sops.ini') }}}}\\n"
    dest: {DEST}/ini.txt
    mode: "0600"
- name: Install the license
  ansible.builtin.copy: {{src: license.key, dest: {DEST}/license.key, mode: "0600"}}
"""
TEMPLATE = """\
yaml={{ yaml_template }}
yaml_pin={{ yaml_pin }}
json={{ json_template }}
json_nested={{ json_nested.inner[0] }}
json_pin={{ json_pin }}
"""


@dataclass
class Deployed:
    """The fleet after its first sync, the plaintext it must never show, and what the hosts must hold."""

    fleet: Fleet
    needles: list[str]
    expected: dict[str, str]
    first: subprocess.CompletedProcess[str]
    watch: ProcWatch
    outputs: list[str] = field(default_factory=list)

    def controller(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the controller; no plaintext secret may be in what it prints."""
        done = self.fleet.controller(*args)
        self.outputs.append(done.stdout + done.stderr)
        leaked = [n for n in self.needles if n in done.stdout + done.stderr]
        assert leaked == [], (args, leaked)
        return done


def add_secrets_role(fleet: Fleet) -> tuple[list[str], dict[str, str]]:
    """A role using secrets of every format, some holding Jinja; the numeric secrets and the expected host files."""
    sops_yaml = fleet.work / ".sops.yaml"
    sops_yaml.write_text(sops_yaml.read_text() + EXTRA_RULES.format(recipient=fleet.key.recipient, role=ROLE))
    pins = [str(random.randint(10**8, 10**9 - 1)) for _ in range(2)]
    yaml_vars = {"yaml_template": f"{secret('yaml')} {{{{ inventory_hostname }}}} {{% if true %}}x{{% endif %}}",
                 "yaml_pin": int(pins[0])}
    nested = f"{{% raw %}}{secret('json-nested')}"
    json_vars = {"json_template": f"{secret('json')} {{{{ 6 * 7 }}}}", "json_pin": int(pins[1]),
                 "json_nested": {"inner": [nested]}}
    env = f"ENV_PLAIN={secret('env-plain')}\nENV_QUOTED=\"{secret('env-quoted')} {{{{ x }}}}\"\n"
    ini_value = f"{secret('ini')} {{{{ lookup('pipe', 'id') }}}}"
    license_key = f"{secret('binary')}\n"

    def encrypt(relative: str, plaintext: str) -> None:
        fleet.write(relative, sops_encrypt(sops_yaml, relative, plaintext))

    encrypt(f"{GROUP_VARS}/more.sops.yml", yaml.safe_dump(yaml_vars))
    encrypt(f"{GROUP_VARS}/more.sops.json", json.dumps(json_vars))
    encrypt(f"{ROLE}/files/app.sops.env", env)
    encrypt(f"{ROLE}/files/app.sops.ini", f"[db]\npassword = {ini_value}\n")
    encrypt(f"{ROLE}/files/license.key", license_key)
    fleet.write(f"{ROLE}/tasks/main.yml", TASKS)
    fleet.write(f"{ROLE}/templates/secrets.conf.j2", TEMPLATE)
    site = fleet.work / "playbooks/site.yml"
    site.write_text(site.read_text() + "\n- name: Secrets\n  hosts: web\n  gather_facts: false\n"
                    "  roles: [secretfiles]\n")
    rendered = (f"yaml={yaml_vars['yaml_template']}\nyaml_pin={pins[0]}\njson={json_vars['json_template']}\n"
                f"json_nested={nested}\njson_pin={pins[1]}\n")
    expected = {"secrets.conf": rendered, "app.env": env, "ini.txt": ini_value + "\n", "license.key": license_key}
    return pins, expected


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, age_key: AgeKey) -> Iterator[Deployed]:
    """One fleet for the whole file: synced once while every process's argv and environment are sampled."""
    root = tmp_path_factory.mktemp("secrets")
    with Lab(root / "lab", 3, prefix=TEST_PREFIX) as lab:
        before = len(PLAINTEXTS)
        fleet = build_fleet(root / "fleet", lab, age_key)
        pins, expected = add_secrets_role(fleet)
        fleet.push("Secrets of every format")
        needles = [*PLAINTEXTS[before:], *pins]
        with ProcWatch(needles) as watch:
            first = fleet.controller("sync")
        deployed = Deployed(fleet, needles, expected, first, watch)
        deployed.outputs.append(first.stdout + first.stderr)
        yield deployed


def host_files(deployed: Deployed, host: str) -> dict[str, str]:
    return {name: deployed.fleet.host_file(host, f"{DEST}/{name}").read_text() for name in deployed.expected}


def test_every_format_is_deployed_literally_braces_included(deployed: Deployed) -> None:
    assert deployed.first.returncode == 0, deployed.first.stdout + deployed.first.stderr
    assert [n for n in deployed.needles if n in deployed.first.stdout + deployed.first.stderr] == []
    for host in ("h1", "h2"):
        assert host_files(deployed, host) == deployed.expected


def test_no_secret_in_any_process_argv_or_environment_during_a_sync(deployed: Deployed) -> None:
    watch = deployed.watch
    assert watch.samples >= 20, watch.samples
    assert {"controller-ansible-playbook", "ssh"} <= watch.programs, sorted(watch.programs)  # it saw the children
    assert watch.found == set()


def test_a_hand_edit_shows_masked_diffs_and_sync_puts_the_secrets_back(deployed: Deployed) -> None:
    for name in deployed.expected:
        deployed.fleet.host_file("h1", f"{DEST}/{name}").write_text("edited by hand\n")

    check = deployed.controller("check")
    assert check.returncode == 2, check.stdout + check.stderr
    for line in ("+yaml=[redacted]", "+yaml_pin=[redacted]", "+json=[redacted]", "+json_nested=[redacted]",
                 "+json_pin=[redacted]", "+ENV_PLAIN=[redacted]", "+ENV_QUOTED=[redacted]", "+[redacted]"):
        assert line in check.stdout, (line, check.stdout)
    assert host_files(deployed, "h1") == dict.fromkeys(deployed.expected, "edited by hand\n")

    fixed = deployed.controller("sync")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert host_files(deployed, "h1") == deployed.expected


def test_no_plaintext_in_history_show_the_state_store_or_temp_files(deployed: Deployed) -> None:
    history = deployed.controller("history", "--json")
    runs = json.loads(history.stdout)
    assert len(runs) >= 3
    for run in runs:
        assert deployed.controller("show", str(run["id"]), "--json").returncode == 0
        assert deployed.controller("show", str(run["id"])).returncode == 0
    assert any("[redacted]" in output for output in deployed.outputs)

    with sqlite3.connect(deployed.fleet.state / "state.db") as db:
        dump = "\n".join(db.iterdump())
    assert "[redacted]" in dump
    assert [n for n in deployed.needles if n in dump] == []
    assert files_containing([n.encode() for n in deployed.needles]) == []


def refused(deployed: Deployed, relative: str, plaintext: str) -> str:
    """Commit a new version with a bad SOPS file: exit 1, one stderr line, nothing applied; then revert it."""
    fleet = deployed.fleet
    fleet.write(relative, plaintext)
    bump_version(fleet, "9.9.9")
    versions = {h: fleet.host_file(h, VERSION).read_text() for h in ("h1", "h2")}
    done = deployed.controller("sync")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and relative in lines[0], done.stderr
    assert {h: fleet.host_file(h, VERSION).read_text() for h in ("h1", "h2")} == versions
    last = fleet.runs()[0]
    assert (last["outcome"], last["reason"]) == ("failed", "DecryptionFailed")
    git(fleet.work, "revert", "--no-edit", "HEAD")
    fleet.push("Revert")
    return lines[0]


def test_a_multi_document_sops_yaml_is_refused_naming_only_the_file(deployed: Deployed) -> None:
    relative = f"{GROUP_VARS}/multi.sops.yml"
    first, second = secret("multi-one"), secret("multi-two")
    deployed.needles += [first, second]
    encrypted = sops_encrypt(deployed.fleet.work / ".sops.yaml", relative, f"a: {first}\n---\nb: {second}\n")
    line = refused(deployed, relative, encrypted)
    assert line.endswith(f"{relative}: not valid yaml after decryption"), line


def test_a_broken_sops_json_is_refused_naming_only_the_file(deployed: Deployed) -> None:
    relative = f"{GROUP_VARS}/broken.sops.json"
    value = secret("broken-json")
    deployed.needles.append(value)
    encrypted = sops_encrypt(deployed.fleet.work / ".sops.yaml", relative, json.dumps({"broken": value}))
    line = refused(deployed, relative, "<<<<<<< HEAD\n" + encrypted)  # a merge conflict in the file
    assert f"cannot decrypt {relative}" in line, line


@pytest.mark.parametrize(("relative", "plaintext", "fmt"), [
    ("group_vars/all/a.sops.yml", "a: {s}\n---\nb: {s}\n", "yaml"),
    ("group_vars/all/a.sops.yaml", "a: [{s}\n", "yaml"),
    ("group_vars/all/a.sops.json", '{{"a": "{s}",', "json"),
    ("files/a.sops.env", "A=1\n{s}\n", "env"),
    ("files/a.sops.ini", "[db\n{s}\n", "ini"),
    ("files/a.sops.ini", "[db]\nkey = {s}\nkey = {s}\n", "ini"),
])
def test_an_invalid_decrypted_file_is_one_line_with_no_chained_error(relative: str, plaintext: str,
                                                                     fmt: str) -> None:
    value = secret("invalid")
    with pytest.raises(ControllerError) as caught:
        literal(relative, plaintext.format(s=value).encode())
    assert caught.value.message == f"{relative}: not valid {fmt} after decryption"
    assert caught.value.__cause__ is None and caught.value.__context__ is None  # nothing carries the text


def test_values_of_every_format_are_masked_and_marked_unsafe() -> None:
    values, content = literal("x.sops.json", b'{"a": "s{{ x }}", "n": 123456, "b": true, "l": [{"k": "deep"}]}')
    assert sorted(values) == ["123456", "deep", "s{{ x }}"]
    assert json.loads(content or "") == {"a": {"__ansible_unsafe": "s{{ x }}"}, "n": 123456, "b": True,
                                         "l": [{"k": {"__ansible_unsafe": "deep"}}]}
    values, content = literal("x.sops.yaml", b"a: s{{ x }}\nn: 123456\n")
    assert values == ["s{{ x }}", "123456"] and content == "a: !unsafe 's{{ x }}'\nn: 123456\n"
    assert literal("x.sops.env", b"# note\nA='one two'\n\nB=three\n") == (["'one two'", "one two", "three", "three"],
                                                                          None)
    values, content = literal("x.sops.ini", b"top = level\n[s]\nk = \"quoted\"\n")
    assert {"level", '"quoted"', "quoted"} <= set(values) and content is None
    assert literal("tls.pem", b"-----BEGIN KEY-----\nabc\n") == (["-----BEGIN KEY-----\nabc\n"], None)
    assert [sops_format(n) for n in ("a.yml", "a.yaml", "a.json", ".env", "a.ini", "a.YAML", "a.txt")] == [
        "yaml", "yaml", "json", "env", "ini", "binary", "binary"]


def test_sops_runs_as_its_own_binary_with_no_python_started_before_it() -> None:
    binary = Path(sops_binary())
    assert binary.read_bytes()[:4] == b"\x7fELF", binary  # not the package's console script, a Python that execs it
    done = subprocess.run([str(binary), "--version", "--disable-version-check"], capture_output=True, text=True,
                          timeout=30, check=True)
    assert done.stdout.startswith("sops 3."), done.stdout


def test_a_wrong_age_key_names_both_sides_to_compare(tmp_path: Path, age_key: AgeKey) -> None:
    # encrypted for the session's key, decrypted with another: what a bastion with the wrong key file meets
    project = tmp_path / "project"
    project.mkdir()
    (project / ".sops.yaml").write_text(
        f"creation_rules:\n  - path_regex: .*\\.sops\\.yml$\n    age: {age_key.recipient}\n")
    relative = "group_vars/all/db.sops.yml"
    (project / relative).parent.mkdir(parents=True)
    (project / relative).write_text(sops_encrypt(project / ".sops.yaml", relative, f"db: {secret('wrong-key')}\n"))
    other = make_age_key(tmp_path / "other")
    with pytest.raises(ControllerError) as refused:
        decrypt_in_place(project, [project / relative], str(other.path))
    message = refused.value.message
    assert message == (
        f"cannot decrypt {relative}: no age key of this bastion is among its recipients: sops.age_key_file "
        f"{other.path} holds {other.recipient}; the file is encrypted for {age_key.recipient} (compare with the "
        ".sops.yaml creation rules, then re-encrypt it with `sops updatekeys` or set sops.age_key_file)"), message
    assert "\n" not in message
