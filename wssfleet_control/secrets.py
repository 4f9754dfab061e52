"""Per-deployment secrets, made once on the control machine and never committed.

They live beside the inventory in ``.secrets/<inventory name>.json`` (git-ignored, mode 600).
Operators who keep secrets in a vault write that file from it before a deploy.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

NAMES = ("jwt_secret", "redis_password")
# What `wssfleet plan` renders where a secret does not exist yet: plan writes nothing.
NOT_YET = "(not made yet: the first deploy makes this secret)"


def path_for(inventory: str | os.PathLike[str]) -> Path:
    inventory = Path(inventory)
    return inventory.resolve().parent / ".secrets" / f"{inventory.stem}.json"


def load(inventory: str | os.PathLike[str], create: bool = True) -> dict[str, str]:
    """Return the deployment's secrets, generating the missing ones when ``create``."""
    if not Path(inventory).is_file():
        raise ValueError(f"inventory {inventory} does not exist")
    path = path_for(inventory)
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    missing = [name for name in NAMES if not stored.get(name)]
    if missing and not create:
        return {**stored, **dict.fromkeys(missing, NOT_YET)}
    if missing:
        for name in missing:
            stored[name] = secrets.token_urlsafe(32)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(stored, handle, indent=2)
        temporary.replace(path)
    return stored
