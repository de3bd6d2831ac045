"""The lab: real sshd hosts, isolated /srv per host, and cleanup that survives abuse."""

from __future__ import annotations

import marshal
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lab import LEAN, REAL, Costs, Lab, LabError
from tests.conftest import own_prefix

ROOT = Path(__file__).resolve().parent.parent
PREFIX = own_prefix(100)  # from CONTROLLER_TEST_PREFIX, so that two checkouts' runs never collide


def lab_processes(directory: Path) -> list[int]:
    """PIDs of every process whose command line names this lab's directory."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
                state = (proc / "status").read_text()
            except OSError:
                continue
            if str(directory) in cmdline and "State:\tZ" not in state:
                found.append(int(proc.name))
    return found


def namespaces(directory: Path) -> list[int]:
    """The long-lived unshare parent of each host (sshd forks short-lived children per connection)."""
    return [pid for pid in lab_processes(directory)
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"unshare")]


APT_OPEN = ("/usr/bin/python3 -c 'import apt; cache = apt.Cache(); "
            "print(len(cache), cache[\"openssh-server\"].is_installed)'")


@pytest.mark.parametrize("costs", [LEAN, REAL], ids=["lean", "real"])
def test_a_lean_host_trims_the_key_exchange_and_package_lists_and_a_real_one_keeps_them(tmp_path: Path,
                                                                                          costs: Costs) -> None:
    with Lab(tmp_path / "lab", 1, prefix=PREFIX, costs=costs) as lab:
        host = lab.hosts[0]
        said = subprocess.run(["ssh", "-v", *lab.ssh_args(), "-p", str(host.port), f"root@{host.address}", "true"],
                              capture_output=True, text=True, timeout=30, check=False)
        assert said.returncode == 0, said.stderr
        [kex] = [line for line in said.stderr.splitlines() if "kex: algorithm:" in line]
        assert kex.endswith("curve25519-sha256" if costs.kex else "sntrup761x25519-sha512"), kex
        # what a role's apt module opens: this machine's packages and lists on a real host; on a lean one, what
        # this machine's apt sees with no lists (installed packages), whether or not this machine has any
        opened = lab.ssh(host, APT_OPEN)
        assert opened.returncode == 0, opened.stderr
        env = dict(os.environ)
        if not costs.apt_lists:
            (tmp_path / "lists/partial").mkdir(parents=True)
            (tmp_path / "apt.conf").write_text(f'Dir::State::Lists "{tmp_path / "lists"}/";\n')
            env["APT_CONFIG"] = str(tmp_path / "apt.conf")
        here = subprocess.run(["sh", "-c", APT_OPEN], capture_output=True, text=True, timeout=60, check=True, env=env)
        assert opened.stdout == here.stdout and opened.stdout.endswith(" True\n"), (opened.stdout, here.stdout)


# what a host's interpreter does with a module mitogen sends: compile it as mitogen.core's importer does, run it
MITOGEN_IMPORT = ("/usr/bin/python3 -c 'import builtins; code = compile(\"value = 1\", \"master:/m.py\", \"exec\", "
                  "flags=0, dont_inherit=True); space = {}; exec(code, space); "
                  "print(space[\"value\"], type(builtins.compile).__name__)'")
# what plain Ansible's module does with its module_utils: imported from a zip in a new temporary directory each run
PAYLOAD = ("/usr/bin/python3 -c 'import sys; code = compile(\"def f():\\n    return 1\\n\", sys.argv[1], \"exec\", "
           "dont_inherit=True); space = {{}}; exec(code, space); "
           "print(code.co_filename, space[\"f\"].__code__.co_filename, space[\"f\"]())' {}")
# what the interpreter loaded once the cache compiled for it: nothing it would not load for itself
LOADED = ("/usr/bin/python3 -c 'import sys; compile(\"loaded = 1\", \"master:/n.py\", \"exec\", flags=0, "
          "dont_inherit=True); print(sorted(m for m in (\"hashlib\", \"typing\", \"importlib.util\") "
          "if m in sys.modules))'")
# a caller with a future import, compiling without dont_inherit: the builtin would apply the caller's future
INHERITED = ("/usr/bin/python3 -c 'from __future__ import annotations\n"
             "space = {}; exec(compile(\"def f(a: int): pass\", \"x.py\", \"exec\"), space); "
             "print(space[\"f\"].__annotations__)'")


@pytest.mark.parametrize("costs", [LEAN, REAL], ids=["lean", "real"])
def test_a_lean_host_keeps_what_its_python_compiles_for_the_user_alone_and_a_real_one_compiles_each_time(
        tmp_path: Path, costs: Costs) -> None:
    import builtins

    import lab.compiled  # the lab reads its directory from it; importing it here changes nothing
    assert type(builtins.compile).__name__ == "builtin_function_or_method"
    with Lab(tmp_path / "lab", 1, prefix=PREFIX, costs=costs) as running:
        host = running.hosts[0]
        directory = host.path(lab.compiled.DIRECTORY)

        def run(command: str, user: str = "root") -> str:
            said = running.ssh(host, command, user)
            assert said.returncode == 0, said.stderr
            return said.stdout

        assert run(INHERITED) == "{'a': 'int'}\n"  # whoever compiles, the caller's future import holds
        if not costs.compiled:
            assert run(MITOGEN_IMPORT) == "1 builtin_function_or_method\n"
            assert not directory.exists()
            return
        [deploy] = [kept for kept in directory.iterdir() if kept.name != "0"]
        assert run(MITOGEN_IMPORT) == "1 function\n"
        [entry] = (directory / "0").iterdir()
        assert list(deploy.iterdir()) == []  # root's compile is root's alone
        # read back: a different program under the same key is what runs
        entry.write_bytes(marshal.dumps(compile("value = 2", "other", "exec")))
        assert run(MITOGEN_IMPORT) == "2 function\n"
        entry.write_bytes(b"damaged")
        assert run(MITOGEN_IMPORT) == "1 function\n"  # compiled again, and kept again
        assert marshal.loads(entry.read_bytes()).co_filename == "master:/m.py"
        # the same source under a name of its own each time: read back (no second entry), under the name asked for
        for payload in ("/tmp/ansible_x_payload_a/x.zip/m.py", "/tmp/ansible_x_payload_b/x.zip/m.py"):
            assert run(PAYLOAD.format(payload)) == f"{payload} {payload} 1\n"
        [payload_entry] = [kept for kept in (directory / "0").iterdir() if kept != entry]
        payload_entry.write_bytes(marshal.dumps(compile("def f():\n    return 2\n", "elsewhere", "exec")))
        assert run(PAYLOAD.format("/tmp/c/m.py")) == "/tmp/c/m.py /tmp/c/m.py 2\n"  # what was kept ran, renamed
        # deploy's interpreter (the relay to root's, through sudo) keeps its own, in a directory of its own
        assert (deploy.stat().st_mode & 0o777, deploy.stat().st_uid) == (0o700, int(deploy.name))
        assert run(MITOGEN_IMPORT, "deploy") == "1 function\n" and len(list(deploy.iterdir())) == 1
        assert run(LOADED, "deploy") == "[]\n" and len(list(deploy.iterdir())) == 2
        # a directory that others may write to could hold code planted for its user: not used, not written
        deploy.chmod(0o777)
        for child in deploy.iterdir():
            child.unlink()
        assert run(MITOGEN_IMPORT, "deploy") == "1 function\n" and list(deploy.iterdir()) == []


def test_ten_hosts_come_up_fast_each_with_its_own_srv(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab", 10, prefix=PREFIX)
    started = time.monotonic()
    with lab:
        took = time.monotonic() - started
        assert took < 2, f"10 hosts took {took:.1f}s"
        for host in lab.hosts[:3]:
            done = lab.ssh(host, f"echo {host.name} > /srv/whoami && cat /srv/whoami")
            assert done.returncode == 0, done.stderr
            assert done.stdout.strip() == host.name
        for host in lab.hosts[:3]:
            assert host.path("/srv/whoami").read_text().strip() == host.name
        assert not lab.hosts[3].path("/srv/whoami").exists()
        assert not Path("/srv/whoami").exists()  # the machine's own /srv is untouched
        # this machine's ~/.bashrc (once hung by a stale pyenv lock) is not what the hosts run
        bashrc = lab.ssh(lab.hosts[0], "cat ~/.bashrc 2>/dev/null | wc -c")
        assert bashrc.returncode == 0 and bashrc.stdout.strip() == "0", bashrc.stdout
    assert lab_processes(lab.directory) == []


def test_starting_twice_and_stopping_a_host_leave_nothing_behind(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab", 3, prefix=PREFIX)
    try:
        lab.start()
        first = set(namespaces(lab.directory))
        lab.start()  # again: the old hosts are replaced, not duplicated
        second = set(namespaces(lab.directory))
        assert len(first) == len(second) == 3 and not first & second

        h2 = lab.host("h2")
        assert lab.ssh(h2, "echo kept > /srv/file").returncode == 0
        session = subprocess.Popen(["ssh", *lab.ssh_args(), "-p", str(h2.port), f"root@{h2.address}",
                                    "sleep 60"])
        time.sleep(0.5)
        lab.stop_host("h2")
        assert session.wait(timeout=10) != 0  # its live session died with it
        down = lab.ssh(h2, "true")
        assert down.returncode == 255 and "refused" in down.stderr
        assert lab.ssh(lab.host("h1"), "true").returncode == 0

        lab.start_host("h2")
        assert lab.ssh(h2, "cat /srv/file").stdout.strip() == "kept"

        other = Lab(tmp_path / "other", 1, prefix=PREFIX)
        with pytest.raises(LabError, match="already in use"):
            other.start()
    finally:
        lab.stop()
    assert lab_processes(lab.directory) == []


def test_each_host_is_a_whole_machine_of_its_own(tmp_path: Path) -> None:
    machine_users = Path("/etc/passwd").read_text()
    with Lab(tmp_path / "lab", 2, prefix=PREFIX) as lab:
        h1, h2 = lab.hosts
        # the deploy user logs in with the lab key and becomes root through sudo
        done = lab.ssh(h1, "hostname && sudo -n useradd --create-home alice && sudo -n sh -c "
                           "'echo managed > /etc/lab-marker' && id alice", user="deploy")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[0] == "h1" and "alice" in done.stdout
        assert h1.path("/etc/lab-marker").read_text() == "managed\n"
        assert "alice:" in h1.path("/etc/passwd").read_text()
        assert h1.path("/home/alice").is_dir()
        # nothing of it reached the other host or this machine
        assert not h2.path("/etc/lab-marker").exists()
        assert "alice:" not in h2.path("/etc/passwd").read_text()
        assert not Path("/etc/lab-marker").exists() and Path("/etc/passwd").read_text() == machine_users
        # its own /tmp, /proc (sshd is PID 1) and /run
        assert lab.ssh(h1, "touch /tmp/lab-own && cat /proc/1/comm").stdout.strip() == "sshd"
        assert not Path("/tmp/lab-own").exists() and not h2.path("/tmp/lab-own").exists()
        lab.stop_host("h1")
        with pytest.raises(LabError, match="not running"):
            h1.path("/etc/lab-marker")
        lab.start_host("h1")  # a restarted host keeps its disk
        assert lab.ssh(h1, "cat /etc/lab-marker && id -u alice").returncode == 0
    # the overlay mounts died with the hosts' namespaces
    assert str(lab.directory) not in Path("/proc/self/mountinfo").read_text()


@pytest.mark.parametrize("how", ["exception", "sigkill"])
def test_a_test_that_dies_half_way_leaves_no_stray_sshd(tmp_path: Path, how: str) -> None:
    directory = tmp_path / "lab"
    ending = "raise RuntimeError('half-way')" if how == "exception" else "os.kill(os.getpid(), 9)"
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from lab import Lab
        with Lab({str(directory)!r}, 2, prefix={PREFIX!r}):
            print("up", flush=True)
            {ending}
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "up"
    assert done.returncode != 0
    deadline = time.monotonic() + 5
    while lab_processes(directory) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lab_processes(directory) == []
    fresh = Lab(directory, 2, prefix=PREFIX)  # the addresses are free again
    with fresh:
        assert fresh.ssh(fresh.host("h1"), "true").returncode == 0


def test_the_lab_command_line(tmp_path: Path) -> None:
    directory = tmp_path / "cli"
    args = [sys.executable, "-m", "lab"]
    up = subprocess.run([*args, "up", "--dir", str(directory), "--hosts", "2", "--prefix", PREFIX],
                        cwd=ROOT, capture_output=True, text=True, timeout=30)
    try:
        assert up.returncode == 0, up.stderr
        assert f"h2 {PREFIX}.2:2222" in up.stdout
        status = subprocess.run([*args, "status", "--dir", str(directory)], cwd=ROOT, capture_output=True,
                                text=True)
        assert status.stdout.strip() == "running"
        assert lab_processes(directory)
    finally:
        down = subprocess.run([*args, "down", "--dir", str(directory)], cwd=ROOT, capture_output=True,
                              text=True, timeout=30)
    assert down.returncode == 0
    assert lab_processes(directory) == []


def test_five_hundred_hosts_come_up_on_consecutive_blocks_and_each_answers(tmp_path: Path) -> None:
    first, second, third = PREFIX.split(".")
    with Lab(tmp_path / "lab", 500, prefix=PREFIX) as lab:
        by_name = {host.name: host.address for host in lab.hosts}
        assert (by_name["h1"], by_name["h250"], by_name["h251"], by_name["h500"]) == (
            f"{PREFIX}.1", f"{PREFIX}.250", f"{first}.{second}.{int(third) + 1}.1",
            f"{first}.{second}.{int(third) + 1}.250")
        assert len(set(by_name.values())) == 500
        for host in (lab.hosts[0], lab.hosts[250], lab.hosts[-1]):
            done = lab.ssh(host, "hostname")
            assert (done.returncode, done.stdout.strip()) == (0, host.name), done.stderr
    assert lab_processes(lab.directory) == []
    with pytest.raises(LabError, match="a lab holds 1 to 1000 hosts, not 1001"):
        Lab(tmp_path / "big", 1001, prefix=PREFIX)
    with pytest.raises(LabError, match=r"prefix 127\.0\.255 has no room for host 251"):
        Lab(tmp_path / "top", 251, prefix="127.0.255")
