"""Prometheus's own linter on a /metrics exposition."""

from __future__ import annotations

import subprocess


def promtool(exposition: bytes) -> str:
    """What ``promtool check metrics`` (Debian's prometheus package) finds wrong with an exposition: "" if nothing."""
    checked = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, check=False)
    found = (checked.stdout + checked.stderr).decode()
    return found if checked.returncode == 0 else f"{found}exit {checked.returncode}"
