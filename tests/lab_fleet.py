"""What the end-to-end tests know about the deployed lab, and how they reach it."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from wssfleet import auth
from wssfleet.fleet import inventory, remote

REPO = Path(__file__).resolve().parent.parent
LAB_INVENTORY = REPO / "inventory" / "lab.py"
LAB_JSON = REPO / ".lab" / "lab.json"
STATUS_LINE = re.compile(r"^\s+\[(?P<host>[^\]]+)\]\s+(?P<status>Success|No changes|Skipped|Error)")
OPERATION_LINE = re.compile(r"^--> Starting (?:serial )?operation: (?P<name>.+?)\s*$")


@dataclass
class Lab:
    @cached_property
    def described(self) -> dict:
        return json.loads(LAB_JSON.read_text())

    @cached_property
    def fleet(self) -> inventory.Fleet:
        return inventory.load(LAB_INVENTORY)

    @property
    def domain(self) -> str:
        return self.described["domain"]

    @property
    def master_address(self) -> str:
        return self.described["master"]["address"]

    @property
    def root_bundle(self) -> str:
        return self.described["acme_root_bundle"]

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.root_bundle)

    def token(self, subject: str = "e2e", ttl: int = 600) -> str:
        return auth.mint(self.fleet.secrets()["jwt_secret"], subject, ttl)

    async def connect(self, path: str = "/ws", subject: str = "e2e", **options) -> ClientConnection:
        """A browser-like client: wss:// to the domain, resolved to the master."""
        options.setdefault("origin", f"https://{self.domain}")
        return await connect(
            f"wss://{self.domain}{path}?token={self.token(subject)}",
            ssl=self.tls_context(),
            host=self.master_address,
            port=443,
            server_hostname=self.domain,
            proxy=None,
            **options,
        )

    def on(self, name: str, command: str) -> subprocess.CompletedProcess:
        node = next(node for node in self.fleet.nodes if node.name == name)
        return remote.run(node, command)


def deploy(
    inventory_path: Path | str = LAB_INVENTORY, *extra: str, env: dict[str, str] | None = None
) -> tuple[int, dict[tuple[str, str], str], str]:
    """Run pyinfra as `make deploy` does; return its exit code, each (operation, host)'s
    status, and the whole output."""
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "pyinfra"),
            "-y",
            str(inventory_path),
            "deploy.py",
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **(env or {})},
    )
    statuses: dict[tuple[str, str], str] = {}
    operation = None
    for line in (result.stdout + result.stderr).splitlines():
        if match := OPERATION_LINE.match(line):
            operation = match["name"]
        elif operation and (match := STATUS_LINE.match(line)):
            statuses[(operation, match["host"])] = match["status"]
    return result.returncode, statuses, result.stdout + result.stderr


def changed(statuses: dict[tuple[str, str], str]) -> list[tuple[str, str]]:
    return sorted(key for key, status in statuses.items() if status == "Success")


def derived_inventory(directory: Path, workers: int | None = None, **settings) -> Path:
    """The lab inventory with some settings changed (same hosts, same secrets), optionally
    keeping only the first ``workers`` workers."""
    path = directory / "lab_changed.py"
    path.write_text(
        "import runpy\n"
        f"_lab = runpy.run_path({str(LAB_INVENTORY)!r})\n"
        f"workers = _lab['workers'][:{workers}]\n"
        "master, redis = _lab['master'], _lab['redis']\n"
        "_names = {name for name, _ in master + workers}\n"
        "all = ([name for name in _lab['all'][0] if name in _names], _lab['all'][1])\n"
        f"all[1]['wssfleet'].update({settings!r})\n"
    )
    return path


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


def plan(inventory_path: Path | str = LAB_INVENTORY) -> tuple[int, dict[str, tuple[str, str]], str]:
    """`make plan`: pyinfra's dry run. Returns, per operation, its (change, conditional
    change) columns, e.g. ("1 (master)", "-")."""
    result = make("plan", f"INVENTORY={inventory_path}")
    output = result.stdout + result.stderr
    rows: dict[str, tuple[str, str]] = {}
    in_table = False
    for line in output.splitlines():
        if line.startswith("--> Detected changes"):
            in_table = True
            continue
        columns = re.split(r"\s{2,}", line.strip())
        if in_table and len(columns) == 3 and columns[0] != "Operation":
            rows[columns[0]] = (columns[1], columns[2])
    return result.returncode, rows, output
