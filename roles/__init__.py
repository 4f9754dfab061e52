"""pyinfra roles: one module per concern, each rendering its own templates/<role>/ files.

deploy.py calls them by the host's inventory groups. Every setting a role reads, with its
default, is documented in wssfleet_control/settings.py (docs/settings.md).
"""

import hashlib
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import FileUploadCommand, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.api.util import get_template
from pyinfra.facts.files import File, Sha256File
from pyinfra.operations import files, server, systemd

from wssfleet_control.checkout import HOSTSIDE
from wssfleet_control.commands import quote
from wssfleet_control.facts import LoadedUnits
from wssfleet_control.hostside.layout import HELPERS, STATE, UPLOADS


def helper_installed(name: str, mode: str = "755"):
    """One host-side helper (wssfleet_control/hostside/<name>) in layout.HELPERS, beside the
    host contract (layout.py) that the base role installs on every host."""
    return files.put(
        name=f"Ensure the helper {name} is installed",
        src=str(HOSTSIDE / name),
        dest=f"{HELPERS}/{name}",
        mode=mode,
    )


def virtualenv_from_wheels(
    label: str,
    directory: str,
    wheelhouse: Callable[[], Path],
    requirements: tuple[str, ...],
    dry: bool,
) -> None:
    """``requirements`` in ``directory``/venv from wheels shipped to ``directory``/wheels, unless
    a complete install is there: a marker written only after pip succeeds decides it, so a
    deploy after a failed install installs again. ``wheelhouse`` builds them (never in a plan).
    """
    marker = f"{directory}/.installed"
    if host.get_fact(File, path=marker):
        return
    wheels = f"{directory}/wheels"
    venv = f"{directory}/venv"
    if not dry:
        files.sync(
            name=f"Ensure {label}'s wheels are on the host",
            src=str(wheelhouse()),
            dest=wheels,
            mode="644",
            delete=True,
        )
    server.shell(
        name=f"Ensure {label} is installed",
        commands=[
            f"rm -rf {quote(venv)}",
            f"python3 -m venv {quote(venv)}",
            f"{quote(venv)}/bin/pip install --quiet --no-index --find-links {quote(wheels)} "
            + " ".join(quote(requirement) for requirement in requirements),
            f"touch {quote(marker)}",
        ],
    )


# A (re)start that systemd refuses at once ("Failed to spawn executor", result 'resources',
# then 'exit-code' while the old cgroup is still being removed: seen on hosts with cgroup v1
# when a start follows a stop closely) is tried again; systemd itself would start the unit
# again after RestartSec, but the deploy would have failed.
SERVICE_RETRY = {"_retries": 3, "_retry_delay": 3}


# A daemon that starts and dies a second later (redis_exporter refused its CA file) is
# "running" when systemd.service looks: each host's daemons this deploy may have started are
# checked again once the deploy is done (units_stay_running).
SETTLE_SECONDS = 2
_STARTED: dict[str, list[tuple[str, OperationMeta]]] = {}


def daemon_running(**arguments) -> OperationMeta:
    """systemd.service(running=True, ...) for a long-running daemon, retried as SERVICE_RETRY
    says, and watched by units_stay_running."""
    started = systemd.service(**SERVICE_RETRY, running=True, **arguments)
    _STARTED.setdefault(host.name, []).append((arguments["service"], started))
    return started


def units_stay_running() -> None:
    """Last in a deploy: when it started or restarted a daemon here, every daemon it ensured
    is still active SETTLE_SECONDS later, or the deploy fails with the unit's journal."""
    watched = _STARTED.pop(host.name, [])
    # Decided when the deploy is planned, as every operation here: a plan or a deploy that
    # starts nothing shows nothing (an _if would show as "may change" in every plan).
    if not any(operation.will_change for _, operation in watched):
        return
    units = " ".join(quote(unit) for unit, _ in watched)
    server.shell(
        name="Ensure the daemons this deploy started are still running moments later",
        commands=[
            f"sleep {SETTLE_SECONDS}; for unit in {units}; do "
            'systemctl is-active --quiet "$unit" && continue; '
            'echo "$unit started, then stopped: its journal follows" >&2; '
            'journalctl -u "$unit" -n 20 --no-pager >&2; exit 1; done'
        ],
    )


def unit_retired(unit: str, why: str) -> None:
    """A unit this host ran for a role it no longer has: stopped and disabled, if it is
    there (its package and data stay). ``why`` ends the operation's name."""
    if unit in host.get_fact(LoadedUnits, pattern=unit):
        systemd.service(
            **SERVICE_RETRY,
            name=f"Ensure {unit} is stopped here ({why})",
            service=unit,
            running=False,
            enabled=False,
        )


def activate_candidate(
    name: str, candidate, candidate_path: str, commands: list[str], one_host_at_a_time=False
) -> None:
    """Run ``commands`` (check, install, load) when a rendered candidate is new, or when an
    earlier deploy rendered it but never got it loaded (a failed check, install or reload).

    After the commands succeed, a copy of the candidate marks it as loaded, so a second
    deploy changes nothing; a rejected candidate is removed so the next deploy retries.
    ``one_host_at_a_time``: hosts that need it run the commands in turn, never together.
    """
    loaded = f"{STATE}/{Path(candidate_path).name}.loaded"
    pending = host.get_fact(Sha256File, path=candidate_path) != host.get_fact(
        Sha256File, path=loaded
    )
    server.shell(
        name=name,
        commands=[*commands, f"install -D -m 600 {quote(candidate_path)} {quote(loaded)}"],
        _if=None if pending else candidate.did_change,
        _serial=one_host_at_a_time,
    )


@operation()
def secret_template(src: str, dest: str, user: str, group: str, mode: str, **data):
    """
    Render a template that holds secrets onto the host; uploaded when its SHA-256 differs.
    Unlike ``files.template`` it never shows the contents: ``pyinfra --diff`` would print them.
    No other user can read the contents at any moment: the file gets its owner and mode
    before a byte is written, and through a sudo user the upload's temporary copy is made in
    a directory only that user can enter (pyinfra's own lands in /tmp, world-readable).

    + src: the template
    + dest: the file on the host
    + user, group, mode: its owner and permissions
    """
    content = get_template(src).render(data).encode()
    digest = hashlib.sha256(content).hexdigest()
    if host.get_fact(Sha256File, path=dest) != digest:
        target = quote(dest)
        yield (
            f"( umask 077 && : >> {target} ) && chown {quote(f'{user}:{group}')} {target} "
            f"&& chmod {quote(mode)} {target}"
        )
        temporary = host.get_temp_filename(dest)
        if host.data.get("_sudo"):
            login = host.data.get("ssh_user", "root")
            yield f"install -d -m 700 -o {quote(login)} {UPLOADS}"
            temporary = f"{UPLOADS}/{digest[:16]}"
        # Into the file as it is (cp and SFTP keep an existing file's owner and mode).
        yield FileUploadCommand(BytesIO(content), dest, remote_temp_filename=temporary)
    else:
        yield from files.file._inner(path=dest, user=user, group=group, mode=mode)
