"""A revision: one commit of the source, as the controller reconciles to it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Revision:
    """One commit of the source: what the controller reconciles to."""

    sha: str
    subject: str
    author: str
    committed_at: str

    @property
    def short(self) -> str:
        return self.sha[:12]
