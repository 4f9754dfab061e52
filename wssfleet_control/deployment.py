"""One deploy as deploy.py sees it: the checked fleet, its secrets, the release, and whether
it is a plan. `wssfleet deploy` and `wssfleet plan` make it and hand it to deploy.py through
pyinfra's State (``of``): no module global carries a deploy."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from wssfleet_control import release
from wssfleet_control.checkout import TEMPLATES
from wssfleet_control.inventory import Fleet

# The attribute of pyinfra's State that holds the run while deploy.py is loaded.
STATE_ATTRIBUTE = "wssfleet_run"


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

    def template(self, role: str, name: str) -> str:
        """The path of one of a role's templates (templates/<role>/<name>)."""
        return str(self.templates / role / name)

    def wheelhouse(self, python_version: str, machine: str) -> Path:
        if self.dry:
            raise DeployError("a plan builds no wheels")
        return release.wheelhouse(python_version, machine)

    def tool_wheelhouse(self, requirements: tuple[str, ...], python_version: str, machine: str):
        if self.dry:
            raise DeployError("a plan builds no wheels")
        return release.tool_wheelhouse(requirements, python_version, machine)


def of(state) -> DeployRun:
    """The run pyinfra's ``state`` was given by the engine."""
    run = getattr(state, STATE_ATTRIBUTE, None)
    if run is None:
        raise DeployError(
            "deploy.py is run by `wssfleet deploy` (make deploy) or `wssfleet plan` (make plan), "
            "which validate the inventory and own the rollout"
        )
    return run
