"""One deploy as deploy.py sees it: the checked fleet, its secrets, the release, and whether
it is a plan. `wssfleet deploy` and `wssfleet plan` set it before pyinfra loads deploy.py."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from wssfleet_control import release
from wssfleet_control.inventory import Fleet

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "templates"


class DeployError(RuntimeError):
    """A deploy could not start or finish; the message says where and why."""


@dataclass(frozen=True)
class DeployRun:
    """What deploy.py needs to know besides the inventory: set by `wssfleet deploy|plan`."""

    fleet: Fleet
    secrets: dict[str, str]
    dry: bool
    templates: Path = TEMPLATES
    release: str = field(default_factory=release.release_id)

    def wheelhouse(self, python_version: str, machine: str) -> Path:
        if self.dry:
            raise DeployError("a plan builds no wheels")
        return release.wheelhouse(python_version, machine)

    def tool_wheelhouse(self, requirements: tuple[str, ...], python_version: str, machine: str):
        if self.dry:
            raise DeployError("a plan builds no wheels")
        return release.tool_wheelhouse(requirements, python_version, machine)


_current: DeployRun | None = None


def begin(run: DeployRun) -> None:
    global _current
    _current = run


def end() -> None:
    global _current
    _current = None


def current_run() -> DeployRun:
    if _current is None:
        raise DeployError(
            "deploy.py is run by `wssfleet deploy` (make deploy) or `wssfleet plan` (make plan), "
            "which validate the inventory and own the rollout"
        )
    return _current


def quote(value: object) -> str:
    """A value as one shell word, whatever it holds."""
    return shlex.quote(str(value))
