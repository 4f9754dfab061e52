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
import sys
import time
from pathlib import Path

from lab import dns_api
from lab.config import (
    DNS_API_PORT,
    KNOT_BIN,
    KNOT_DNS_PORT,
    KNOT_TSIG_KEY,
    LabError,
    LabSettings,
)
from lab.processes import Tracked, spawn
from wssfleet_control.checkout import REPO

KNOTD = KNOT_BIN / "usr" / "sbin" / "knotd"
KNOTC = KNOT_BIN / "usr" / "sbin" / "knotc"
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
control:
    listen: "{directory / "run" / "knot.sock"}"
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


def start_api(settings: LabSettings, directory: Path, logs: Path) -> Tracked:
    """The Cloudflare and Route 53 stand-in (lab/dns_api.py), with new credentials, changing
    Knot's zone through knotc."""
    config = directory / dns_api.CONFIG_FILE
    config.write_text(
        json.dumps(
            {
                "address": settings.gateway,
                "port": DNS_API_PORT,
                "zone": zone_of(settings.domain),
                "knotc": [
                    "env",
                    f"LD_LIBRARY_PATH={LIBRARIES}",
                    str(KNOTC),
                    "-c",
                    str(directory / "knot.conf"),
                ],
                **dns_api.credentials(),
            }
        )
    )
    config.chmod(0o600)
    (directory / dns_api.JOURNAL_FILE).unlink(missing_ok=True)
    return spawn(
        "dns-api",
        [sys.executable, "-m", "lab.dns_api", str(config)],
        logs / "dns-api.log",
        env={"PYTHONPATH": str(REPO)},
    )


def wait_ready(settings: LabSettings, timeout: float = 15.0) -> None:
    """Until Knot answers on TCP (the plugin's updates go over TCP), and the API stand-in."""
    deadline = time.monotonic() + timeout
    for port, what in ((KNOT_DNS_PORT, "Knot"), (DNS_API_PORT, "The DNS API stand-in")):
        while True:
            try:
                with socket.create_connection((settings.gateway, port), timeout=1):
                    break
            except OSError as error:
                if time.monotonic() > deadline:
                    where = f"{settings.gateway}:{port}"
                    raise LabError(f"{what} does not answer on {where}: {error}") from None
            time.sleep(0.2)


def api(directory: Path) -> dict[str, str]:
    """What certbot's cloudflare and route53 plugins need to reach the stand-in."""
    config = json.loads((directory / dns_api.CONFIG_FILE).read_text())
    return {
        "cloudflare_api_url": f"http://{config['address']}:{config['port']}"
        + dns_api.CLOUDFLARE_PREFIX,
        "route53_api_url": f"http://{config['address']}:{config['port']}",
        **{key: config[key] for key in dns_api.credentials()},
        "journal": str(directory / dns_api.JOURNAL_FILE),
    }


def tsig(directory: Path) -> dict[str, str]:
    return json.loads((directory / TSIG_FILE).read_text())
