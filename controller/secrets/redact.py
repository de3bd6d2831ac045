"""Masking decrypted values out of everything that leaves the process."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from controller.vocabulary import MASK

# Shorter values cannot be masked without mangling ordinary output (documented limit).
MIN_LENGTH = 4


class Redactor:
    """Replaces every known secret value (whole, line by line, and JSON-escaped) with a mask."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            for piece in (secret, *secret.splitlines()):
                piece = piece.strip()
                if len(piece) >= MIN_LENGTH:
                    forms.add(piece)
                    forms.add(json.dumps(piece)[1:-1])
        self._forms = frozenset(forms)
        ordered = sorted(forms, key=len, reverse=True)  # longest first, so no secret is half-masked
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __add__(self, other: Redactor) -> Redactor:
        return Redactor(self._forms | other._forms)

    def text(self, text: str) -> str:
        """``text`` with every secret masked."""
        return self._pattern.sub(MASK, text) if self._pattern and text else text

    def value(self, data: Any) -> Any:
        """A copy of a JSON-like structure with every string masked."""
        if isinstance(data, str):
            return self.text(data)
        if isinstance(data, dict):
            return {self.text(str(k)): self.value(v) for k, v in data.items()}
        if isinstance(data, (list, tuple)):
            return [self.value(v) for v in data]
        return data
