"""The fleet an inventory describes: its hosts by role, their addresses, settings and SSH.

The same code checks an inventory before anything connects (``wssfleet check``) and inside
``deploy.py``, so the check and the deploy cannot disagree. It also writes the one OpenSSH
config that tools outside pyinfra (testinfra, the tests) use to reach the same hosts.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import runpy
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote as quote_url

from wssfleet_control import app_sources, secrets
from wssfleet_control.app_sources import AppSource, AppSourceError
from wssfleet_control.hostside import layout
from wssfleet_control.settings import (
    MAX_WORKER_PROCESSES,
    MONITORING_PORTS,
    PLAIN_PATH,
    PORTS_USED_ON_MASTER,
    Settings,
    SettingsError,
    resolve,
)

# The Redis user the workers connect as (roles/redis.py gives it only what it needs).
WORKER_REDIS_USER = "wssfleet"


def app_redis_user(name: str) -> str:
    """The Redis user of the app ``name``: its own keys and channels only (roles/redis.py)."""
    return f"app-{name}"


def app_redis_secret(name: str) -> str:
    """The secret that holds the app ``name``'s Redis password."""
    return f"app_{name.replace('-', '_')}_redis_password"


def app_secret(name: str, variable: str) -> str:
    """The secret that holds the value of the app ``name``'s ``variable`` (its secrets)."""
    return f"app_{name.replace('-', '_')}_secret_{variable.lower()}"


def app_secret_names(name: str, app) -> list[str]:
    """Every secret the app ``name`` has: its Redis password and each of its secrets."""
    names = [app_redis_secret(name)] if app.redis else []
    return names + [app_secret(name, variable) for variable in app.secrets]


def app_redis_prefix(name: str) -> str:
    """The start of every key and channel the app ``name`` may use."""
    return f"app:{name}:"


# With several redis hosts, this many Sentinels watch the primary (a majority: two).
SENTINELS = 3
# "monitoring" is optional: without it, the master runs Prometheus.
ROLES = ("master", "workers", "redis", "monitoring")
# pyinfra's SSH host data and the OpenSSH option each one means.
SSH_OPTIONS = {
    "ssh_hostname": "HostName",
    "ssh_user": "User",
    "ssh_port": "Port",
    "ssh_key": "IdentityFile",
    "ssh_known_hosts_file": "UserKnownHostsFile",
    "ssh_strict_host_key_checking": "StrictHostKeyChecking",
}


@dataclass(frozen=True)
class Node:
    """One host: its inventory name, private address and SSH settings."""

    name: str
    address: str
    data: dict[str, Any]

    @property
    def ssh_host(self) -> str:
        return self.data.get("ssh_hostname") or self.name

    @property
    def ssh_options(self) -> dict[str, Any]:
        return {key: value for key, value in self.data.items() if key.startswith("ssh_")}

    @property
    def sudo(self) -> bool:
        return bool(self.data.get("_sudo")) or self.ssh_options.get("ssh_user", "root") != "root"


@dataclass(frozen=True)
class Fleet:
    inventory_path: str
    settings: Settings
    masters: list[Node]
    workers: list[Node]
    redis_nodes: list[Node]
    monitors: list[Node]
    # Each app's source, inspected (settings: apps).
    app_sources: dict[str, AppSource] = dataclasses.field(default_factory=dict)

    @property
    def monitoring(self) -> Node:
        """The first host that runs Prometheus (each one scrapes the whole fleet)."""
        return self.monitors[0]

    @property
    def master(self) -> Node:
        """The first master: it obtains the certificate the others serve."""
        return self.masters[0]

    @property
    def redis(self) -> Node:
        """The first redis host: the primary until the Sentinels promote another."""
        return self.redis_nodes[0]

    @property
    def sentinels(self) -> list[Node]:
        """With several redis hosts, the three hosts that run a Sentinel: the redis hosts
        first, then masters, then workers (a majority of them must see a primary gone)."""
        if len(self.redis_nodes) < 2:
            return []
        distinct: dict[str, Node] = {}
        for node in (*self.redis_nodes, *self.masters, *self.workers):
            distinct.setdefault(node.name, node)
        return list(distinct.values())[:SENTINELS]

    @property
    def front_door(self) -> str:
        """The floating address clients reach (no prefix); empty in DNS mode or with one
        master."""
        if len(self.masters) < 2 or not self.settings.front_door_address:
            return ""
        return self.settings.front_door_address.partition("/")[0]

    @property
    def nodes(self) -> list[Node]:
        seen: dict[str, Node] = {}
        for node in (*self.masters, *self.redis_nodes, *self.workers, *self.monitors):
            seen.setdefault(node.name, node)
        return list(seen.values())

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def node_at(self, address: str) -> Node:
        """The host with this private address (as Redis and the Sentinels name hosts)."""
        return next(node for node in self.nodes if node.address == address)

    def roles_of(self, name: str) -> list[str]:
        """The inventory groups (ROLES) a host is in: each is a role of the same name; and
        "sentinel" on the hosts that run one."""
        roles = []
        if any(master.name == name for master in self.masters):
            roles.append("master")
        if any(node.name == name for node in self.redis_nodes):
            roles.append("redis")
        if any(worker.name == name for worker in self.workers):
            roles.append("workers")
        if any(node.name == name for node in self.monitors):
            roles.append("monitoring")
        if any(node.name == name for node in self.sentinels):
            roles.append("sentinel")
        return roles

    def secrets(self, create: bool = True) -> dict[str, str]:
        tls_hosts = None
        if self.settings.internal_tls:
            tls_hosts = {node.name: node.address for node in self.nodes}
        # The masters' certificates also serve as clients: their HAProxy peers ask for one.
        peers = [master.name for master in self.masters]
        return secrets.load(
            self.inventory_path,
            create=create,
            tls_hosts=tls_hosts,
            tls_clients=peers,
            command=self.settings.secrets_command,
            private_ca_domains=self.settings.domains
            if self.settings.certificate_source == "private_ca"
            else (),
            more=[
                secret
                for name, app in sorted(self.settings.apps.items())
                for secret in app_secret_names(name, app)
            ],
        )

    def worker_ports(self, processes: int) -> list[int]:
        return self.settings.worker_ports(processes)

    def app_workers(self, name: str) -> list[Node]:
        """The workers the app ``name`` runs on, in inventory order."""
        chosen = self.settings.apps[name].workers
        return [worker for worker in self.workers if not chosen or worker.name in chosen]

    def apps_on(self, worker: str) -> list[str]:
        """The apps that run on the worker ``worker``, by name."""
        return [
            name
            for name in sorted(self.settings.apps)
            if any(node.name == worker for node in self.app_workers(name))
        ]

    def app_redis_url(self, name: str, password: str) -> str:
        """How the app ``name`` reaches Redis: as its own user (roles/redis.py)."""
        return self.redis_url(password, user=app_redis_user(name))

    def ssh_config(self) -> str:
        """An OpenSSH config with one Host block a node, from the inventory's ssh_* data."""
        blocks = []
        for node in self.nodes:
            lines = [f"Host {node.name}", f"  HostName {node.ssh_host}"]
            for key, option in SSH_OPTIONS.items():
                value = node.ssh_options.get(key)
                if key != "ssh_hostname" and value is not None:
                    if key == "ssh_key":
                        value = os.path.expanduser(value)
                    lines.append(f"  {option} {value}")
            lines += ["  BatchMode yes", "  LogLevel ERROR"]
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks) + "\n"

    def redis_url(self, password: str, user: str = WORKER_REDIS_USER) -> str:
        """How a worker reaches Redis: as the least-privileged worker user."""
        address = f"{self.redis.address}:{self.settings.redis_port}"
        credentials = f"{user}:{quote_url(password, safe='')}"
        if self.settings.internal_tls:
            ca = f"{layout.WORKER_TLS_DIRECTORY}/ca.pem"
            return f"rediss://{credentials}@{address}/0?ssl_ca_certs={quote_url(ca, safe='')}"
        return f"redis://{credentials}@{address}/0"


HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*")
# Each host field a deploy uses, the grammar it must follow, and the fix to suggest.
HOST_FIELDS: dict[str, tuple[re.Pattern[str] | None, str]] = {
    "private_address": (None, "give an IP address like 10.0.0.5"),
    "ssh_hostname": (HOST_NAME, "give a host name like web1.example.com or an IP address"),
    "ssh_user": (re.compile(r"[a-z_][a-z0-9_.-]{0,31}"), "give a user name like deploy"),
    "ssh_key": (
        PLAIN_PATH,
        "give a key file path like ~/.ssh/id_ed25519",
    ),
    "ssh_known_hosts_file": (PLAIN_PATH, "give a file path"),
    "ssh_strict_host_key_checking": (
        re.compile(r"yes|no|accept-new"),
        "give yes, no or accept-new",
    ),
}


def _check_host(name: str, data: dict[str, Any]) -> None:
    """Every host field a deploy uses follows its grammar: nothing reaches a shell, an
    nftables rule, Redis's bind or an OpenSSH config that is not what it claims to be."""
    if not HOST_NAME.fullmatch(name):
        raise SettingsError(f"host {name!r}: give a host name like web1 or web1.example.com")
    for field, (grammar, fix) in HOST_FIELDS.items():
        value = data.get(field)
        if value is None:
            continue
        if field == "private_address" or (field == "ssh_hostname" and _is_ip(value)):
            valid = _is_ip(value)
        else:
            valid = (
                isinstance(value, str) and grammar is not None and bool(grammar.fullmatch(value))
            )
        if not valid:
            raise SettingsError(f"host {name}: {field}={value!r} is invalid: {fix}")
    unknown = sorted(key for key in data if key.startswith("ssh_") and key not in _ssh_keys())
    if unknown:
        raise SettingsError(
            f"host {name}: {', '.join(unknown)} is no SSH setting pyinfra knows: use "
            f"{', '.join(sorted(_ssh_keys()))}"
        )
    port = data.get("ssh_port")
    if port is not None and (
        not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536
    ):
        raise SettingsError(f"host {name}: ssh_port={port!r} is invalid: give a port 1-65535")


def _ssh_keys() -> frozenset[str]:
    """The host data pyinfra's SSH connector reads (its ConnectorData)."""
    from pyinfra.connectors.ssh import ConnectorData

    return frozenset(ConnectorData.__annotations__)


def _is_ip(value: Any) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _node(name: str, data: dict[str, Any]) -> Node:
    _check_host(name, data)
    address = data.get("private_address") or data.get("ssh_hostname") or name
    if not _is_ip(address):
        # It goes into Redis's bind, the firewall's rules and HAProxy's servers: a name there
        # fails late (or means something else on the host).
        source = "ssh_hostname" if data.get("ssh_hostname") else "its name"
        raise SettingsError(
            f"host {name}: its address comes from {source} ({address!r}), which is not an IP "
            "address: give private_address, the IP address the other hosts reach it at"
        )
    return Node(name, address, data)


def groups_of(inventory: Any) -> dict[str, list[dict[str, Any]]]:
    """The roles' hosts and their data, as plain JSON-able values."""
    return {
        role: [
            {"name": host.name, "data": dict(host.data.dict())}
            for host in inventory.get_group(role, [])
        ]
        for role in ROLES
    }


def from_inventory(inventory: Any, path: str | os.PathLike[str]) -> Fleet:
    """Build and check the fleet of a pyinfra Inventory read from ``path``; raise
    SettingsError when it is wrong."""
    described = groups_of(inventory)
    check_group_members(path, described)
    return from_groups(described)


def check_group_members(path: str | os.PathLike[str], described: dict[str, list]) -> None:
    """pyinfra leaves out of a group, silently, a name that is no host of the inventory (a
    typo: ``redis = ["lb9"]``), and the role would land on the master: refuse it instead."""
    written = runpy.run_path(str(path))
    hosts = sorted({entry["name"] for members in described.values() for entry in members})
    for role in ROLES:
        members = written.get(role) or []
        if isinstance(members, tuple) and len(members) == 2 and isinstance(members[1], dict):
            members = members[0]  # (hosts, group data)
        found = {entry["name"] for entry in described.get(role, [])}
        for member in members:
            name = member[0] if isinstance(member, tuple) and member else member
            if isinstance(name, str) and name not in found:
                raise SettingsError(
                    f"group {role!r} names {name!r}, which is no host of the inventory "
                    f"({', '.join(hosts)}): correct the name, or define the host (in 'all', "
                    "or with its data in one of the groups)"
                )


def from_groups(described: dict[str, list[dict[str, Any]]]) -> Fleet:
    groups = {
        role: [_node(entry["name"], entry["data"]) for entry in described.get(role, [])]
        for role in ROLES
    }
    if not groups["master"]:
        raise SettingsError("the inventory has no master: add a host to group 'master'")
    if not groups["workers"]:
        raise SettingsError(
            "the inventory has no workers: add at least one host to group 'workers'"
        )
    redis_nodes = groups["redis"] or groups["master"][:1]
    # Without a monitoring group, every master runs Prometheus.
    monitoring_nodes = groups["monitoring"] or groups["master"]
    everyone = {node.name: node for role in ROLES for node in groups[role]}
    addresses: dict[str, str] = {}
    for node in everyone.values():
        if node.address in addresses:
            raise SettingsError(
                f"hosts {addresses[node.address]} and {node.name} share the address {node.address}:"
                " give each host its own ssh_hostname or private_address"
            )
        addresses[node.address] = node.name
    first = next(iter(everyone.values()))
    settings = resolve(first.data.get("wssfleet"))
    inventory_path = first.data.get("wssfleet_inventory")
    if not inventory_path:
        raise SettingsError("the inventory's 'all' group must set wssfleet_inventory=__file__")
    fleet = Fleet(
        inventory_path,
        settings,
        groups["master"],
        groups["workers"],
        redis_nodes,
        monitoring_nodes,
    )
    _check_ports(fleet)
    _check_high_availability(fleet)
    fleet.app_sources.update(_inspected_apps(fleet))
    return fleet


def _inspected_apps(fleet: Fleet) -> dict[str, AppSource]:
    """Each app's workers exist and its source can be shipped; SettingsError names the app."""
    known = {worker.name for worker in fleet.workers}
    inspected = {}
    for name, app in sorted(fleet.settings.apps.items()):
        unknown = sorted(set(app.workers) - known)
        if unknown:
            raise SettingsError(
                f"setting apps.{name}.workers names {', '.join(unknown)}, not in group "
                f"'workers' ({', '.join(sorted(known))}): name workers, or leave it empty for all"
            )
        source = Path(fleet.inventory_path).parent / os.path.expanduser(app.source)
        try:
            inspected[name] = app_sources.inspect(name, source, app.command)
        except AppSourceError as error:
            raise SettingsError(str(error)) from None
    return inspected


def _check_high_availability(fleet: Fleet) -> None:
    if fleet.settings.front_door_address and len(fleet.masters) < 2:
        raise SettingsError(
            f"setting front_door_address={fleet.settings.front_door_address!r} needs two or "
            "more hosts in group 'master': add one, or remove the setting"
        )
    if len(fleet.redis_nodes) > 1 and len(fleet.sentinels) < SENTINELS:
        raise SettingsError(
            f"{len(fleet.redis_nodes)} redis hosts need {SENTINELS} distinct hosts for "
            f"the Sentinels (redis, master and worker hosts), the inventory has "
            f"{len(fleet.sentinels)}: add a host, or keep one redis host"
        )
    front_door = fleet.front_door
    if front_door and any(node.address == front_door for node in fleet.nodes):
        raise SettingsError(
            f"setting front_door_address={fleet.settings.front_door_address!r} is a host's "
            "own address: give an unused address of the masters' network"
        )


def _check_ports(fleet: Fleet) -> None:
    settings = fleet.settings
    processes = settings.worker_processes
    count = MAX_WORKER_PROCESSES if processes == "auto" else processes
    span = fleet.worker_ports(count) + settings.metrics_ports(count)
    for worker in fleet.workers:
        taken = {int(worker.data.get("ssh_port") or 22): "SSH", **MONITORING_PORTS}
        roles = fleet.roles_of(worker.name)
        if "master" in roles:
            taken.update(PORTS_USED_ON_MASTER)
        if "redis" in roles:
            taken[settings.redis_port] = "Redis"
        if "sentinel" in roles:
            taken[settings.redis_sentinel_port] = "Redis Sentinel"
        for port, user in taken.items():
            if port in span:
                raise SettingsError(
                    f"settings worker_base_port={settings.worker_base_port} and "
                    f"metrics_port_offset={settings.metrics_port_offset} clash on {worker.name}: "
                    f"the service and metrics ports include {port} ({user}); move either"
                )


def load(path: str | os.PathLike[str]) -> Fleet:
    """Read an inventory file the way pyinfra does, without connecting to any host.

    pyinfra's CLI package monkey-patches the standard library with gevent when imported,
    so a process not patched yet reads the file in a child process (``python -m
    wssfleet_control describe``); the CLI, patched from its start, reads it itself.
    """
    if not Path(path).is_file():
        raise SettingsError(f"inventory {path} does not exist")
    if _gevent_patched():
        try:
            described = describe(path)
        except SettingsError:
            raise
        # The inventory is the operator's Python: what it raised, as the child would print it.
        except SystemExit as stop:
            raise SettingsError(f"inventory {path}: {stop.code}") from None
        except Exception as error:
            cause = getattr(error, "exception", error)  # pyinfra's UnexpectedExternalError
            raise SettingsError(f"inventory {path}: {type(cause).__name__}: {cause}") from None
        return from_groups(described)
    result = subprocess.run(
        [sys.executable, "-m", "wssfleet_control", "describe", str(path)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        last = lines[-1].removeprefix("Error: ") if lines else "unreadable"
        raise SettingsError(f"inventory {path}: {last}")
    return from_groups(json.loads(result.stdout))


def _gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("socket")


def describe(path: str | os.PathLike[str]) -> dict[str, list[dict[str, Any]]]:
    from pyinfra.api.state import State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory

    # pyinfra's loader records the file it executes on the current State.
    with ctx_state.use(State()):
        described = groups_of(make_inventory(str(path), cwd=os.getcwd()))
    check_group_members(path, described)
    return described
