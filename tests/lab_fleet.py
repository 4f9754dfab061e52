"""What the end-to-end tests know about the deployed lab, and how they reach it.

Deploys and plans run as `wssfleet deploy|plan --json`, whose report the tests read; hosts are
reached with the OpenSSH config that the inventory itself generates (as `wssfleet verify`).
"""

from __future__ import annotations

import ipaddress
import json
import ssl
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from wssfleet import auth
from wssfleet_control import commands, inventory
from wssfleet_control.checkout import REPO

LAB_INVENTORY = REPO / "inventory" / "lab.py"
LAB_JSON = REPO / ".lab" / "lab.json"
SSH_CONFIG = REPO / "build" / "ssh_config.lab-tests"
# The tests run thousands of short commands on lab hosts: each reuses one SSH connection per
# host (30 ms a command instead of 300 ms), which gives up within seconds on a host cut off.
SSH_SHARED_CONNECTIONS = f"""
Host *
  ControlMaster auto
  ControlPath {REPO / "build" / "ssh-%C"}
  ControlPersist 30
  ServerAliveInterval 2
  ServerAliveCountMax 2
"""


def _ssh(name: str, command: str, timeout: float, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", "-F", str(SSH_CONFIG), *options, name, command],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Lab:
    @cached_property
    def described(self) -> dict:
        return json.loads(LAB_JSON.read_text())

    @cached_property
    def fleet(self) -> inventory.Fleet:
        fleet = inventory.load(LAB_INVENTORY)
        SSH_CONFIG.parent.mkdir(exist_ok=True)
        SSH_CONFIG.write_text(fleet.ssh_config() + SSH_SHARED_CONNECTIONS)
        return fleet

    @property
    def domain(self) -> str:
        return self.described["domain"]

    @property
    def master_address(self) -> str:
        """Where clients reach the fleet: the masters' front door (the one master's address
        in a one-master lab)."""
        return self.described.get("front_door_address") or self.described["master"]["address"]

    @property
    def root_bundle(self) -> str:
        return self.described["acme_root_bundle"]

    def tls_context(self) -> ssl.SSLContext:
        """A new context trusting the lab's ACME roots, the standard, the short-lived and the
        DNS-01 CA's (callers may narrow it)."""
        context = ssl.create_default_context(cafile=self.root_bundle)
        context.load_verify_locations(cafile=self.described["acme_short_lived"]["root_bundle"])
        context.load_verify_locations(cafile=self.described["acme_dns01"]["root_bundle"])
        return context

    @cached_property
    def _client_tls(self) -> ssl.SSLContext:
        return self.tls_context()

    def token(self, subject: str = "e2e", ttl: int = 600) -> str:
        """A token for every channel."""
        secret = self.fleet.secrets()["jwt_secret"]
        return auth.mint(secret, subject, ttl, subscribe=["*"], publish=["*"])

    async def connect(self, path: str = "/ws", subject: str = "e2e", **options) -> ClientConnection:
        """A browser-like client: wss:// to the domain, resolved to the master."""
        return await self.connect_with_token(self.token(subject), path, **options)

    async def connect_with_token(
        self, token: str, path: str = "/ws", **options
    ) -> ClientConnection:
        options.setdefault("origin", f"https://{self.domain}")
        # The front door, unless the test names one master's own address.
        options.setdefault("host", self.master_address)
        return await connect(
            f"wss://{self.domain}{path}{'&' if '?' in path else '?'}token={token}",
            ssl=self._client_tls,
            port=443,
            server_hostname=self.domain,
            proxy=None,
            **options,
        )

    async def connect_app(
        self, path: str, domain: str | None = None, **options
    ) -> ClientConnection:
        """A client of an app (settings: apps), as browsers reach it: wss:// to the domain
        (the lab's, or ``domain``) at the front door, no token."""
        options.setdefault("host", self.master_address)
        domain = domain or self.domain
        return await connect(
            f"wss://{domain}{path}",
            ssl=self._client_tls,
            port=443,
            server_hostname=domain,
            proxy=None,
            open_timeout=10,
            **options,
        )

    def ports(self, worker: str) -> list[int]:
        """The service ports of a worker: one instance a CPU, as the lab deploys them."""
        return self.fleet.worker_ports(int(self.on(worker, "nproc").stdout))

    def on(self, name: str, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """A shell command on a lab host, through the inventory's own SSH settings."""
        assert self.fleet
        result = _ssh(name, command, timeout)
        if result.returncode == 255:
            # The shared connection broke (its host restarted, or was cut and is back): once
            # more on a connection of its own; a host SSH cannot reach fails the same way.
            result = _ssh(name, command, timeout, "-o", "ControlPath=none")
        return result

    def redis_primary(self) -> str:
        """The host most Sentinels name the Redis primary (the one redis host without them);
        a Sentinel just back from a cut may still name the old one."""
        fleet = self.fleet
        if not fleet.sentinels:
            return fleet.redis.name
        answers = []
        for sentinel in fleet.sentinels:
            try:
                answer = self.on(sentinel.name, commands.sentinel_primary(), timeout=5).stdout
            except subprocess.TimeoutExpired:
                continue  # that host is cut off
            if answer.split():
                answers.append(answer.split()[0])
        if not answers:
            raise AssertionError("no Sentinel names a Redis primary")
        return fleet.node_at(max(set(answers), key=answers.count)).name

    def front_door_holder(self) -> list[str]:
        """The masters that hold the front door address now (one, when all is well)."""
        front_door = self.described.get("front_door_address")
        holders = []
        for master in self.fleet.masters:
            try:
                shown = self.on(master.name, commands.holds_address(front_door), timeout=5)
            except subprocess.TimeoutExpired:
                continue  # cut off: it holds nothing anyone can reach
            if shown.stdout:
                holders.append(master.name)
        return holders


def wssfleet(*arguments: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """The control CLI, as the Make targets call it."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "wssfleet"), *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def deploy(inventory_path: Path | str = LAB_INVENTORY, *extra: str) -> tuple[int, dict, str]:
    """`wssfleet deploy --json`: its exit code, its report and its log (stderr)."""
    result = wssfleet("deploy", "--json", "-i", str(inventory_path), *extra)
    return result.returncode, _report(result), result.stderr


def plan(inventory_path: Path | str = LAB_INVENTORY, *extra: str) -> tuple[int, dict, str]:
    """`wssfleet plan --json`."""
    result = wssfleet("plan", "--json", "-i", str(inventory_path), *extra)
    return result.returncode, _report(result), result.stderr


def _report(result: subprocess.CompletedProcess) -> dict:
    try:
        return json.loads(result.stdout)
    except ValueError:
        raise AssertionError(
            f"no JSON report (exit {result.returncode}):\n{result.stdout[-2000:]}\n"
            f"{result.stderr[-3000:]}"
        ) from None


def with_status(report: dict, *statuses: str) -> list[tuple[str, str]]:
    """(operation, host) pairs of the report whose outcome is one of ``statuses``."""
    return sorted(
        (operation["name"], host)
        for operation in report["operations"]
        for host, outcome in operation["hosts"].items()
        if outcome["status"] in statuses
    )


def changed(report: dict) -> list[tuple[str, str]]:
    return with_status(report, "changed")


def restarted(report: dict) -> list[tuple[str, int]]:
    return [
        (step["host"], step["port"])
        for step in report["rollout"]["steps"]
        if step["outcome"] == "done"
    ]


def derived_inventory(
    directory: Path,
    workers: int | None = None,
    masters: int | None = None,
    own_secrets: bool = False,
    monitoring: str | None = None,
    ssh_user: str | None = None,
    **settings,
) -> Path:
    """The lab inventory with some settings changed (same hosts; the lab's secrets unless
    ``own_secrets``), optionally keeping only the first ``workers`` workers (the first
    ``masters`` masters, and the redis hosts among them), with a
    ``monitoring`` group of that one host, or reached as another ``ssh_user`` (with sudo)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "lab_changed.py"
    path.write_text(
        "import runpy\n"
        f"_lab = runpy.run_path({str(LAB_INVENTORY)!r})\n"
        f"workers = _lab['workers'][:{workers}]\n"
        f"master = _lab['master'][:{masters}]\n"
        "redis = [name for name in _lab['redis'] if name in dict(master)]\n"
        + (
            f"master, workers = ([(n, {{**d, 'ssh_user': {ssh_user!r}, '_sudo': True}})\n"
            "                    for n, d in hosts]\n"
            "                   for hosts in (master, workers))\n"
            if ssh_user
            else ""
        )
        + "_names = {name for name, _ in master + workers}\n"
        "all = ([name for name in _lab['all'][0] if name in _names], _lab['all'][1])\n"
        f"all[1]['wssfleet'].update({settings!r})\n"
        + ("all[1]['wssfleet_inventory'] = __file__\n" if own_secrets else "")
        + (f"monitoring = [{monitoring!r}]\n" if monitoring else "")
    )
    return path


@contextmanager
def edited(path: Path, old: str, new: str):
    """The checkout's file with ``old`` replaced by ``new``, restored afterwards."""
    original = path.read_text()
    assert old in original, f"{old!r} is not in {path}"
    path.write_text(original.replace(old, new, 1))
    try:
        yield
    finally:
        path.write_text(original)


def make(*arguments: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a make target the way an operator does, from the checkout."""
    return subprocess.run(
        ["make", "--no-print-directory", *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def add_bridge_address(bridge: str, n: int) -> str:
    """Give this machine its ``n``-th extra address on the lab bridge (counted down from the
    broadcast address); returns it as ADDRESS/PREFIX, what `ip addr del` takes back."""
    shown = json.loads(
        subprocess.run(
            ["ip", "-j", "-4", "addr", "show", "dev", bridge],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )[0]["addr_info"][0]
    network = ipaddress.ip_network(f"{shown['local']}/{shown['prefixlen']}", strict=False)
    interface = f"{network.broadcast_address - 1 - n}/{network.prefixlen}"
    subprocess.run(
        ["ip", "addr", "add", interface, "dev", bridge], capture_output=True, text=True, check=True
    )
    return interface
