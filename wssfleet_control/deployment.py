"""One deploy as deploy.py sees it: the checked fleet, its secrets, the release, and whether
it is a plan. `wssfleet deploy` and `wssfleet plan` make it and hand it to deploy.py through
pyinfra's State (``of``): no module global carries a deploy."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from wssfleet_control import app_sources, release
from wssfleet_control.checkout import TEMPLATES
from wssfleet_control.hostside.layout import BUILTIN_APP
from wssfleet_control.inventory import Fleet
from wssfleet_control.site_certificate import Material

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
    # The certificate the masters serve when no ACME server issues it (site_certificate.py).
    site_certificate: Material | None = None

    def template(self, role: str, name: str) -> str:
        """The path of one of a role's templates (templates/<role>/<name>)."""
        return str(self.templates / role / name)

    def wheelhouse(self, python_version: str, machine: str) -> Path:
        if self.dry:
            raise DeployError("a plan builds no wheels")
        return release.wheelhouse(python_version, machine)

    def app_release(self, name: str) -> str:
        """The release of the app ``name`` this deploy ships (a digest of its source)."""
        return self.fleet.app_sources[name].release_id()

    def releases(self) -> dict[str, str]:
        """Every release this deploy ships, by app: the built-in service's and each app's."""
        return {
            BUILTIN_APP: self.release,
            **{name: self.app_release(name) for name in self.fleet.app_sources},
        }

    def app_build(self, name: str) -> Path:
        """The app's release, built on this machine and packed for upload (once per release)."""
        if self.dry:
            raise DeployError("a plan builds no release")
        built = app_sources.build(self.fleet.app_sources[name], release.BUILD / "apps")
        return app_sources.archive(built)

    def build_apps(self, say) -> None:
        """Every app's release, built before any host is touched: a build that fails stops
        the deploy with the tool's words (DeployError)."""
        for name, source in sorted(self.fleet.app_sources.items()):
            say(f"--> Building app {name}'s release {source.release_id()} ({source.runtime})")
            try:
                self.app_build(name)
            except app_sources.AppSourceError as error:
                raise DeployError(str(error)) from None

    def app_wheelhouse(self, name: str, python_version: str, machine: str) -> Path:
        if self.dry:
            raise DeployError("a plan builds no wheels")
        app = self.fleet.app_sources[name]
        return release.app_wheelhouse(
            f"{name}-{app.release_id()}",
            tuple(app_sources.python_requirements(app)),
            app_sources.requirements_file(app),
            python_version,
            machine,
        )

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
