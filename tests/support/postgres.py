"""A real PostgreSQL server (Debian's package) for the tests: its own cluster in a temporary directory, on a free
loopback port, a superuser with a password (so that every URL the tests use holds a secret to look for)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

PASSWORD = "pg-test-passw0rd-not-for-output"


def binaries() -> Path:
    """Debian's PostgreSQL programs (the newest installed major version)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise RuntimeError("no PostgreSQL server: apt-get install postgresql (make system does)")
    return found[-1].parent


class Postgres:
    """One cluster, started by ``start`` and removed by ``stop``; ``url(name)`` makes an empty database."""

    def __init__(self) -> None:
        self.bin = binaries()
        # under /tmp, not pytest's tmp_path: as root the server runs as the postgres user, who cannot enter
        # pytest's 0700 directories
        self.root = Path(tempfile.mkdtemp(prefix="controller-pg-"))
        self.data = self.root / "data"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.user = "controller"

    def _as_server(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a server program as its owner: the postgres user when the tests run as root (PostgreSQL refuses
        root)."""
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *argv], capture_output=True, text=True, check=True, timeout=120)

    def start(self) -> Postgres:
        secret = self.root / "pwfile"
        secret.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(secret, "postgres")
        self._as_server(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, f"--pwfile={secret}",
                        "--auth=scram-sha-256", "--locale=C", "--encoding=UTF8")
        secret.unlink()
        self._as_server(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
                        "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        return self

    def url(self, database: str, password: str = PASSWORD) -> str:
        """A new empty database's URL."""
        with psycopg.connect(self.admin_url(password), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{database}"')
        return f"postgresql://{self.user}:{password}@127.0.0.1:{self.port}/{database}"

    def admin_url(self, password: str = PASSWORD) -> str:
        return f"postgresql://{self.user}:{password}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        try:
            self._as_server(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
