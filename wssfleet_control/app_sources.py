"""A team's own WebSocket app as the fleet ships it: how it runs (decided from its source),
what identifies a release of it, and the release directory built on the control machine.

The hosts get a finished directory: a Node.js project with its dependencies installed from
its lockfile (dev dependencies left out), so they need no registry, only the runtime
(Debian's ``nodejs``); an executable as it is. A release is named by a digest of the source
and the command, computed without building, so a plan can tell whether the hosts run it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tarfile
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from wssfleet_control.release import digest_of

Runtime = Literal["node", "python", "executable"]
NODE_LOCKFILES = ("package-lock.json", "npm-shrinkwrap.json")
PYTHON_PROJECT_FILES = ("pyproject.toml", "requirements.txt")
# Never part of a release: what a build makes, and what a checkout keeps for itself.
LEFT_OUT = frozenset(
    {".git", "node_modules", "__pycache__", ".venv", "venv", ".pytest_cache", "build", "dist"}
)
# How long one build may take before it is reported as hung.
BUILD_SECONDS = 600


class AppSourceError(ValueError):
    """An app's source cannot be shipped as given; the message names the app, what is wrong
    and the fix."""


@dataclass(frozen=True)
class AppSource:
    """One app's source on the control machine, and how an instance of it starts."""

    name: str
    directory: Path
    command: tuple[str, ...]
    runtime: Runtime

    def files(self) -> list[Path]:
        """What a release of it is made of, in a stable order."""
        return sorted(
            path
            for path in self.directory.rglob("*")
            if path.is_file() and not LEFT_OUT.intersection(path.relative_to(self.directory).parts)
        )

    def release_id(self) -> str:
        """A digest of every file of the source and of the command that starts it."""
        return digest_of(self.directory, self.files(), shlex.join(self.command).encode() + b"\0")


def inspect(name: str, source: Path, command: str) -> AppSource:
    """The app ``name`` at ``source`` started by ``command``, or AppSourceError naming what
    is wrong: a missing directory, a Node.js project without a lockfile, a command that the
    release would not have, a source whose runtime cannot be told."""
    where = f"apps.{name}"
    if not source.is_dir():
        raise AppSourceError(
            f"{where}.source: {source} is not a directory on this machine: give the directory "
            "that holds the app's code (relative paths are from the inventory's directory)"
        )
    try:
        words = tuple(shlex.split(command))
    except ValueError as error:
        raise AppSourceError(f"{where}.command: {error}: quote it as a shell would") from None
    if not words:
        raise AppSourceError(f"{where}.command: empty: say how one instance starts")
    runtime = _runtime(where, source, words)
    _script_is_there(where, source, words, runtime)
    return AppSource(name, source.resolve(), words, runtime)


def _runtime(where: str, source: Path, words: tuple[str, ...]) -> Runtime:
    if (source / "package.json").is_file():
        if not any((source / lockfile).is_file() for lockfile in NODE_LOCKFILES):
            raise AppSourceError(
                f"{where}: {source} has package.json but no package-lock.json: run "
                "'npm install' there and keep the lockfile with the code (the fleet installs "
                "exactly what it locks, nothing newer)"
            )
        return "node"
    if any((source / project).is_file() for project in PYTHON_PROJECT_FILES):
        return "python"
    if _executable(source, words[0]):
        return "executable"
    raise AppSourceError(
        f"{where}: cannot tell how to run {source}: it has no package.json (Node.js), no "
        f"pyproject.toml or requirements.txt (Python), and {words[0]!r} is not an executable "
        "file in it (a binary or script: give its path, like ./server)"
    )


def _executable(source: Path, word: str) -> bool:
    path = (source / word).resolve()
    return path.is_relative_to(source.resolve()) and path.is_file() and os.access(path, os.X_OK)


def _script_is_there(where: str, source: Path, words: tuple[str, ...], runtime: Runtime) -> None:
    """The file the command runs is part of the release: caught here, not as an instance that
    never becomes healthy."""
    program = words[0]
    interpreters = {"node": ("node", "nodejs"), "python": ("python", "python3")}
    if runtime in interpreters and program in interpreters[runtime]:
        script = next((word for word in words[1:] if not word.startswith("-")), None)
        if script is None or not (source / script).is_file():
            raise AppSourceError(
                f"{where}.command: {program} runs {script or 'nothing'}, which is not a file in "
                f"{source}: give the script's path relative to it"
            )
    elif "/" in program and not _executable(source, program):
        raise AppSourceError(
            f"{where}.command: {program} is not an executable file in {source}: check the path "
            "and that it is executable (chmod +x)"
        )


# pyinfra deploys hosts concurrently (gevent's patched threading): one build at a time.
_building = threading.Lock()


def build(app: AppSource, releases: Path) -> Path:
    """The release directory of ``app`` under ``releases``: _build, one at a time."""
    with _building:
        return _build(app, releases)


def _build(app: AppSource, releases: Path) -> Path:
    """The release directory of ``app`` under ``releases`` (made once per release id): the
    source without what LEFT_OUT names, and for Node.js its locked dependencies without dev
    ones. A directory is complete when its marker is there: a failed build is made again."""
    release_id = app.release_id()
    release = releases / app.name / release_id
    marker = release / ".wssfleet-built"
    if marker.is_file():
        return release
    if release.exists():
        shutil.rmtree(release)
    release.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(app.directory, release, ignore=shutil.ignore_patterns(*LEFT_OUT))
    if app.runtime == "node":
        _run(app, ["npm", "ci", "--omit=dev", "--no-audit", "--no-fund"], release)
    marker.write_text(release_id + "\n")
    return release


def archive(release: Path) -> Path:
    """The release directory as one .tar.gz beside it (what is uploaded), made once; owners
    are left out, so what a host unpacks is root's."""
    with _building:
        return _archive(release)


def _archive(release: Path) -> Path:
    target = release.with_name(release.name + ".tar.gz")
    if target.is_file():
        return target
    partial = target.with_name(target.name + ".partial")

    def anonymous(member: tarfile.TarInfo) -> tarfile.TarInfo:
        member.uid = member.gid = 0
        member.uname = member.gname = "root"
        return member

    with tarfile.open(partial, "w:gz") as bundle:
        for path in sorted(release.iterdir()):
            bundle.add(path, arcname=path.name, filter=anonymous)
    partial.replace(target)
    return target


def python_requirements(app: AppSource) -> list[str]:
    """What a Python app needs installed, as pip takes it: its requirements file, or the
    dependencies its pyproject.toml lists (the app itself runs from its release directory)."""
    if (app.directory / "requirements.txt").is_file():
        return ["-r", str(app.directory / "requirements.txt")]
    project = tomllib.loads((app.directory / "pyproject.toml").read_text()).get("project", {})
    return list(project.get("dependencies", []))


def requirements_file(app: AppSource) -> str:
    """The requirements as one file a host's pip reads (written into the wheelhouse)."""
    listed = python_requirements(app)
    if listed[:1] == ["-r"]:
        return Path(listed[1]).read_text()
    return "".join(f"{requirement}\n" for requirement in listed)


def _run(app: AppSource, command: list[str], directory: Path) -> None:
    try:
        subprocess.run(
            command,
            cwd=directory,
            check=True,
            capture_output=True,
            text=True,
            timeout=BUILD_SECONDS,
        )
    except FileNotFoundError:
        raise AppSourceError(
            f"apps.{app.name}: {command[0]} is not installed on this machine: run 'make tools'"
        ) from None
    except subprocess.CalledProcessError as error:
        # The tool's first words that say something (npm ends with usage and a log's path).
        lines = (error.stderr or error.stdout).splitlines()
        said = [line for line in lines if line.strip() not in ("", "npm error")][:6]
        raise AppSourceError(
            f"apps.{app.name}: {shlex.join(command)} failed in {directory}:\n  " + "\n  ".join(said)
        ) from None
    except subprocess.TimeoutExpired:
        raise AppSourceError(
            f"apps.{app.name}: {shlex.join(command)} took over {BUILD_SECONDS} s in {directory}"
        ) from None
