"""Releases of the service: what identifies one, and the wheels that install it.

A release is named by a digest of the service's source (service/), computed without building
anything, so `wssfleet plan` can tell whether hosts run it. `wssfleet deploy` builds the
wheels for each host's own Python: workers need no PyPI access, and the control side is never
in them, so editing it makes no release.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import threading
import tomllib
from functools import cache
from pathlib import Path

from wssfleet_control.checkout import BUILD, REPO, SERVICE

WHEELHOUSE = BUILD / "wheelhouse"
# glibc of Debian 12 is 2.36 and of Debian 13 2.41: every manylinux tag up to it runs there.
GLIBC_TAGS = ("2_17", "2_24", "2_27", "2_28", "2_31", "2_34", "2_35", "2_36")


class WheelError(RuntimeError):
    """A wheel could not be built or downloaded; the message carries pip's own words."""


def service_files() -> list[Path]:
    ignored = {"__pycache__", ".pytest_cache", "build", "dist"}
    return sorted(
        path
        for path in SERVICE.rglob("*")
        if path.is_file()
        and not ignored.intersection(path.relative_to(SERVICE).parts)
        and path.suffix != ".pyc"
        and not path.name.endswith(".egg-info")
    )


def digest_of(root: Path, files: list[Path], salt: bytes = b"") -> str:
    """A release id: the first 12 hex digits of a SHA-256 over ``salt`` and each file's path
    under ``root`` and its contents, in the order given."""
    digest = hashlib.sha256(salt)
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


@cache
def release_id() -> str:
    """The service's release: a digest of every file that goes into its wheel."""
    return digest_of(SERVICE, service_files())


# What the workers install: the service with the server's dependencies.
SERVICE_REQUIREMENT = "wssfleet[server]"


def pinned_dependencies() -> list[str]:
    """The service's pins, its server's included, without their markers: pip evaluates
    markers against the control machine's Python, not the hosts', so every pinned wheel is
    shipped; pip on the host installs those its own Python needs."""
    project = tomllib.loads((SERVICE / "pyproject.toml").read_text())["project"]
    pins = [*project["dependencies"], *project["optional-dependencies"]["server"]]
    return [requirement.split(";")[0].strip() for requirement in pins]


# Hosts are deployed concurrently (pyinfra's greenlets, under gevent's patched threading):
# the first host of a type builds its wheelhouse, the others wait for it and reuse it.
_building = threading.Lock()


def wheelhouse(python_version: str, machine: str) -> Path:
    """A directory holding exactly the wheels one host type needs; built once per run."""
    with _building:
        return _service_wheelhouse(python_version, machine)


def tool_wheelhouse(requirements: tuple[str, ...], python_version: str, machine: str) -> Path:
    """The wheels of a pinned third-party tool (certbot) for one host type, built once."""
    with _building:
        return _tool_wheelhouse(requirements, python_version, machine)


def app_wheelhouse(
    label: str, requirements: tuple[str, ...], listing: str, python_version: str, machine: str
) -> Path:
    """The wheels an app's ``requirements`` (pip's arguments) need on one host type, and
    ``listing``, the requirements file the host's pip installs them by; built once per run.
    ``label`` names the app's release."""
    with _building:
        return _app_wheelhouse(label, requirements, listing, python_version, machine)


@cache
def _app_wheelhouse(
    label: str, requirements: tuple[str, ...], listing: str, python_version: str, machine: str
) -> Path:
    target = _fresh(WHEELHOUSE / f"app-{label}" / f"py{python_version}-{machine}")
    _progress(f"--> Fetching the wheels of app {label} for Python {python_version} on {machine}")
    _download(target, list(requirements), python_version, machine)
    (target / "requirements.txt").write_text(listing)
    return target


def requirements_id(requirements: tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()[:12]


@cache
def _service_wheelhouse(python_version: str, machine: str) -> Path:
    target = _fresh(WHEELHOUSE / release_id() / f"py{python_version}-{machine}")
    _progress(f"--> Building the service's wheels for Python {python_version} on {machine}")
    _run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(target),
            str(SERVICE),
        ],
        "build the wssfleet wheel",
    )
    _download(target, pinned_dependencies(), python_version, machine)
    return target


@cache
def _tool_wheelhouse(requirements: tuple[str, ...], python_version: str, machine: str) -> Path:
    name = f"tools-{requirements_id(requirements)}"
    target = _fresh(WHEELHOUSE / name / f"py{python_version}-{machine}")
    names = ", ".join(requirement.split("=")[0] for requirement in requirements)
    _progress(f"--> Fetching the wheels of {names} for Python {python_version} on {machine}")
    _download(target, list(requirements), python_version, machine)
    return target


def _progress(line: str) -> None:
    """A long step says it started (on stderr: with --json, stdout is the report)."""
    print(line, file=sys.stderr, flush=True)


def _fresh(target: Path) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    return target


def _download(target: Path, requirements: list[str], python_version: str, machine: str) -> None:
    platforms = [f"manylinux_{tag}_{machine}" for tag in GLIBC_TAGS]
    platforms += [f"manylinux2014_{machine}", f"linux_{machine}"]
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        python_version,
        "--dest",
        str(target),
    ]
    for platform in platforms:
        command += ["--platform", platform]
    _run(command + requirements, f"download wheels for Python {python_version} {machine}")


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if "WARNING: Location" not in line]
        raise WheelError(f"could not {what}:\n" + "\n".join(errors[-12:]))
