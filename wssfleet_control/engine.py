"""pyinfra driven through its Python API: one connected State per command, every operation's
outcome kept per host as data, and remote commands through the same connectors.

The process must be gevent-patched before anything else is imported (wssfleet_control.cli
does it first), as pyinfra's own CLI does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import gevent
import pyinfra
from pyinfra.api import Config, State
from pyinfra.api.command import StringCommand
from pyinfra.api.connect import disconnect_all
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operation import OperationMeta
from pyinfra.api.operations import run_ops
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_config, ctx_inventory, ctx_state
from pyinfra_cli.exceptions import UnexpectedExternalError
from pyinfra_cli.inventory import make_inventory
from pyinfra_cli.log import setup_logging
from pyinfra_cli.util import load_deploy_file

from wssfleet_control import deployment
from wssfleet_control.checkout import DEPLOY_FILE, REPO
from wssfleet_control.deployment import DeployError, DeployRun
from wssfleet_control.inventory import from_inventory
from wssfleet_control.settings import SettingsError


@dataclass
class Result:
    ok: bool
    stdout: str
    stderr: str


class Session:
    """A connected pyinfra State for one inventory."""

    def __init__(
        self, inventory_path: str | os.PathLike[str], quiet: bool = False, diff: bool = False
    ) -> None:
        setup_logging(logging.WARNING if quiet else logging.INFO)
        # As in pyinfra's CLI: an operation is identified by where deploy.py calls it, so
        # the same call on several hosts is one operation.
        pyinfra.is_cli = True
        self.inventory_path = str(inventory_path)
        self.state = State(check_for_changes=True)
        self.state.cwd = str(REPO)
        ctx_state.set(self.state)
        # With diff, file operations print how each file would change (secret files excepted:
        # roles.secret_template withholds them).
        config = Config(DIFF=diff)
        ctx_config.set(config)
        inventory = make_inventory(self.inventory_path, cwd=str(REPO))
        ctx_inventory.set(inventory)
        self.fleet = from_inventory(inventory, self.inventory_path)
        self.state.init(inventory, config)
        self.connected = False
        # Hosts SSH did not reach when the session connected, and why where it is known.
        self.unreachable: list[str] = []
        self.why: dict[str, str] = {}

    def connect(self, every_host: bool = True) -> None:
        """Connect to every host once. A deploy needs them all (DeployError naming those it
        cannot reach); a command about the fleet (status, renew) goes on without them."""
        if not self.connected:
            self.state.set_stage(StateStage.Connect)
            # A key file this machine lacks: said as such, not tried (pyinfra's connector
            # raises inside its greenlet, which prints a traceback for each host).
            self.why.update(
                (host.name, why) for host in self.state.inventory if (why := _unusable_key(host))
            )
            self.why.update(_connect_all(self.state, skip=set(self.why)))
            for host in self.state.inventory:
                if host.connected:
                    _without_nagle(host)
            self.connected = True
            self.unreachable = sorted(host.name for host in self.state.failed_hosts)
        if every_host and self.unreachable:
            named = ", ".join(
                f"{name} ({self.why[name]})" if name in self.why else name
                for name in self.unreachable
            )
            raise DeployError(f"cannot reach {named} over SSH")

    def unreachable_because(self, name: str) -> str:
        """Why a host did not answer, as a problem line ends: "does not answer over SSH"
        unless something more precise is known."""
        return self.why.get(name, "does not answer over SSH")

    def close(self) -> None:
        if self.connected:
            disconnect_all(self.state)
            self.connected = False

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def host(self, name: str):
        return self.state.inventory.get_host(name)

    def on(self, name: str, command: str, timeout: int = 120) -> Result:
        """A shell command on one host, as the inventory's SSH user (with its sudo); not ok,
        without trying, on a host SSH did not reach."""
        self.connect(every_host=False)
        if name in self.unreachable:
            return Result(False, "", f"{name} did not answer over SSH")
        host = self.host(name)
        ok, output = host.run_shell_command(
            StringCommand(command),
            _sudo=host.data.get("_sudo", False),
            _timeout=timeout,
            print_output=False,
            print_input=False,
        )
        return Result(ok, output.stdout, output.stderr)

    def converge(self, run: DeployRun) -> dict[str, Any]:
        """Load deploy.py for every host and, unless the run is dry, execute it. Returns each
        operation's outcome per host; a failed host is named in ``failed_hosts``."""
        self.connect()
        setattr(self.state, deployment.STATE_ATTRIBUTE, run)
        try:
            self.state.set_stage(StateStage.Prepare)
            try:
                load_deploy_file(self.state, str(DEPLOY_FILE))
            except UnexpectedExternalError as error:
                raise refusal(error) from None
            try:
                self.state.get_op_order()
            except PyinfraError as error:
                raise DeployError(
                    "pyinfra found no one order for the operations on every host, so nothing "
                    f"was changed: a bug in wssfleet's roles ({error}); `wssfleet plan` shows "
                    "the same, please report it with the inventory's shape"
                ) from None
            failure = None
            if not run.dry:
                self.state.set_stage(StateStage.Execute)
                try:
                    run_ops(self.state)
                except PyinfraError as error:
                    failure = str(error)
        finally:
            delattr(self.state, deployment.STATE_ATTRIBUTE)
        report = self.report(run.dry)
        if failure:
            report["error"] = failure
        return report

    def report(self, dry: bool) -> dict[str, Any]:
        operations = []
        for op_hash in self.state.get_op_order():
            names = sorted(self.state.op_meta[op_hash].names)
            per_host = {}
            for host in self.state.inventory:
                if op_hash not in self.state.ops.get(host, {}):
                    continue
                data = self.state.get_op_data_for_host(host, op_hash)
                per_host[host.name] = _outcome(data, dry)
            operations.append({"name": " / ".join(names), "hosts": per_host})
        return {
            "dry": dry,
            "operations": operations,
            "failed_hosts": sorted(host.name for host in self.state.failed_hosts),
        }


def _without_nagle(host) -> None:
    """Send each SSH packet at once. paramiko leaves Nagle's algorithm on, so every command's
    small requests wait for the server's delayed ACK: about 45 ms a command on the lab's bridge
    against 5 ms without, hundreds of times a deploy (OpenSSH sets TCP_NODELAY too)."""
    client = getattr(host.connector, "client", None)
    transport = client.get_transport() if client is not None else None
    if transport is not None and isinstance(transport.sock, socket.socket):
        transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def refusal(error: UnexpectedExternalError) -> Exception:
    """What the operator reads when deploy.py stopped: a role's refusal (an unsupported
    release, a setting this host cannot carry) in its own words, as one DeployError; any other
    exception as pyinfra wrapped it, with its traceback."""
    cause = error.exception
    if isinstance(cause, DeployError | SettingsError):
        return DeployError(str(cause))
    return error


def _outcome(data: Any, dry: bool) -> dict[str, Any]:
    meta = data.operation_meta
    if dry:
        if not meta._maybe_is_change:
            return {"status": "unchanged"}
        condition = _predicted(data.global_arguments["_if"])
        if condition is None:
            return {"status": "may change"}
        return {"status": "will change" if condition else "unchanged"}
    if not meta.is_complete():
        return {"status": "not run"}
    if meta.did_succeed(_raise_if_not_complete=False):
        return {"status": "changed" if meta.did_change() else "unchanged"}
    output = meta._combined_output
    lines = output.output.splitlines() if output is not None else []
    return {"status": "failed", "output": "\n".join(lines[-40:])}


def _predicted(condition: Any) -> bool | None:
    """What a dry run can tell of an ``_if``: an earlier operation's ``did_change`` is true
    when that operation would change; None for a condition it cannot judge."""
    if not condition:
        return True
    if isinstance(condition, list):
        predictions = [_predicted(item) for item in condition]
        return None if None in predictions else all(predictions)
    owner = getattr(condition, "__self__", None)
    if isinstance(owner, OperationMeta) and condition.__name__ == "did_change":
        return bool(owner._maybe_is_change)
    return None


def _unusable_key(host) -> str:
    """Why ``host``'s ssh_key cannot be used from this machine, or ''."""
    key = host.data.get("ssh_key")
    if not key:
        return ""
    path = os.path.expanduser(key)
    if not os.path.isfile(path):
        return f"its ssh_key {key} does not exist on this machine"
    if not os.access(path, os.R_OK):
        return f"its ssh_key {key} is not readable by this user"
    return ""


def _connect_all(state: State, skip: set[str]) -> dict[str, str]:
    """pyinfra's connect_all, but one host's failure is that host's alone: pyinfra's re-raises
    the first error a connection raised (a key file it cannot load), so the hosts after it
    were never activated, and gevent printed a traceback for each. Hosts named in ``skip``
    are not tried. Returns why each host that raised failed, in pyinfra's words."""
    hosts = [host for host in state.inventory if state.is_host_in_limit(host)]

    def attempt(host) -> str:
        try:
            host.connect()
        except PyinfraError as error:
            return str(error)
        return ""

    tried = {host: state.pool.spawn(attempt, host) for host in hosts if host.name not in skip}
    gevent.joinall(list(tried.values()))
    why = {host.name: greenlet.value for host, greenlet in tried.items() if greenlet.value}
    failed = {host for host in hosts if host.name in skip}
    for host in tried:
        if host.connected:
            state.activate_host(host)
        else:
            failed.add(host)
    # "No hosts remaining!": every host is marked failed before pyinfra says so.
    with contextlib.suppress(PyinfraError):
        state.fail_hosts(failed, activated_count=len(hosts))
    return why
