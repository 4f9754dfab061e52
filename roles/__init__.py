"""pyinfra roles: one module per concern, each rendering its own templates/<role>/ files.

deploy.py calls them by the host's inventory groups. Every role's settings, with their
defaults, are documented in wssfleet/fleet/settings.py (README, 'Settings').
"""

import os
from pathlib import Path

from pyinfra import host
from pyinfra.facts.server import Command
from pyinfra.operations import server

# Operators may keep customised templates elsewhere (same layout); tests use this too.
TEMPLATES = Path(os.environ.get("WSSFLEET_TEMPLATES") or Path(__file__).parent.parent / "templates")
STATE = "/var/lib/wssfleet"


def template(role: str, name: str) -> str:
    return str(TEMPLATES / role / name)


def open_files_limit() -> int:
    """The most open files any service on this host can get: PID 1's hard limit."""
    line = host.get_fact(Command, "grep 'Max open files' /proc/1/limits")
    return int(line.split()[4])


def activate_candidate(name: str, candidate, candidate_path: str, commands: list[str]) -> None:
    """Run ``commands`` (check, install, load) when a rendered candidate is new, or when an
    earlier deploy rendered it but never got it loaded (a failed check, install or reload).

    After the commands succeed, a copy of the candidate marks it as loaded, so a second
    deploy changes nothing; a rejected candidate is removed so the next deploy retries.
    """
    loaded = f"{STATE}/{Path(candidate_path).name}.loaded"
    pending = host.get_fact(Command, f"cmp -s {candidate_path} {loaded} || echo pending")
    server.shell(
        name=name,
        commands=[*commands, f"install -D -m 600 {candidate_path} {loaded}"],
        _if=None if pending else candidate.did_change,
    )
