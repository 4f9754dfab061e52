"""Knot DNS on the bridge address: authoritative for the lab's zone, taking RFC 2136 updates
signed with a TSIG key, as an operator's DNS server would for certbot's dns-rfc2136 plugin.
The DNS-01 Pebble (lab/config.py, DNS01_CA) resolves through it.

Knot runs unpacked from Debian's packages (`make tools`: installing the package would start
a system DNS server here), as the lab's own process, with its zone, journal and socket under
.lab/dns.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import time
from pathlib import Path

from lab.config import KNOT_BIN, KNOT_DNS_PORT, KNOT_TSIG_KEY, LabError, LabSettings
from lab.processes import Tracked, spawn

KNOTD = KNOT_BIN / "usr" / "sbin" / "knotd"
LIBRARIES = KNOT_BIN / "usr" / "lib" / "x86_64-linux-gnu"
ALGORITHM = "hmac-sha256"
TSIG_FILE = "tsig.json"


def zone_of(domain: str) -> str:
    """The zone Knot serves: the lab domain's parent (lab.test for wss.lab.test)."""
    return domain.split(".", 1)[1]


def start(settings: LabSettings, directory: Path, logs: Path) -> Tracked:
    """Write Knot's config, zone and TSIG key under ``directory`` and start it."""
    zone = zone_of(settings.domain)
    for part in ("zones", "run", "db"):
        (directory / part).mkdir(parents=True, exist_ok=True)
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    tsig = directory / TSIG_FILE
    tsig.write_text(
        json.dumps({"name": KNOT_TSIG_KEY, "algorithm": ALGORITHM.upper(), "secret": secret})
    )
    tsig.chmod(0o600)
    (directory / "zones" / f"{zone}.zone").write_text(
        f"$ORIGIN {zone}.\n$TTL 60\n"
        f"@ SOA ns.{zone}. hostmaster.{zone}. 1 60 60 3600 60\n"
        f"@ NS ns.{zone}.\n"
        f"ns A {settings.gateway}\n"
        f"* A {settings.front_door_address}\n"
    )
    config = directory / "knot.conf"
    config.write_text(
        f"""server:
    rundir: "{directory / "run"}"
    listen: {settings.gateway}@{KNOT_DNS_PORT}
database:
    storage: "{directory / "db"}"
key:
  - id: {KNOT_TSIG_KEY}
    algorithm: {ALGORITHM}
    secret: {secret}
acl:
  - id: acme-updates
    key: {KNOT_TSIG_KEY}
    action: update
template:
  - id: default
    storage: "{directory / "zones"}"
    file: "%s.zone"
    zonefile-sync: -1
zone:
  - domain: {zone}
    acl: acme-updates
log:
  - target: stderr
    any: info
"""
    )
    config.chmod(0o600)
    if not KNOTD.is_file():
        raise LabError(f"Knot is not unpacked in {KNOT_BIN}: run 'make tools'")
    return spawn(
        "knotd",
        [str(KNOTD), "-c", str(config)],
        logs / "knot.log",
        env={"LD_LIBRARY_PATH": str(LIBRARIES)},
    )


def wait_ready(settings: LabSettings, timeout: float = 15.0) -> None:
    """Until Knot answers on TCP (the plugin's updates go over TCP)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((settings.gateway, KNOT_DNS_PORT), timeout=1):
                return
        except OSError as error:
            if time.monotonic() > deadline:
                where = f"{settings.gateway}:{KNOT_DNS_PORT}"
                raise LabError(f"Knot does not answer on {where}: {error}") from None
        time.sleep(0.2)


def tsig(directory: Path) -> dict[str, str]:
    return json.loads((directory / TSIG_FILE).read_text())
