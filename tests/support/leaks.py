"""Looking for a secret where it must never be: files at rest."""

from __future__ import annotations

import base64
from pathlib import Path


def files_containing(home: Path, secret: str) -> list[Path]:
    """Files under `home` holding `secret` in clear or in a common encoding of it
    (base64, hex, UTF-16)."""
    forms = [
        secret.encode(),
        base64.b64encode(secret.encode()),
        secret.encode().hex().encode(),
        secret.encode("utf-16-le"),
    ]
    return [
        path
        for path in home.rglob("*")
        if path.is_file() and any(form in path.read_bytes() for form in forms)
    ]
