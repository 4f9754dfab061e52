"""What a lab looks like: names, addresses and paths, from LAB_* variables with defaults."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from wssfleet_control.checkout import LAB_STATE, REPO
from wssfleet_control.settings import DnsName

CHECKOUT_DIR = LAB_STATE
# Machine-wide, because the bridge, the nftables table and the root filesystems are too:
# a lab started from another checkout, or left by a stopped session, is found here.
STATE_DIR = Path("/var/lib/wssfleet-lab")
MACHINES_DIR = Path("/var/lib/machines")
# One cached base per Debian release, e.g. /var/lib/machines/wssfleet-base-trixie.
BASE_PREFIX = "wssfleet-base"
BRIDGE = "wssfleet0"
NFT_TABLE = "wssfleet_lab"
MACHINE_PREFIX = "wssfleet-"
# The Debian releases a lab can be built from (LAB_SUITE), by codename; the first is the default.
SUITES = {"trixie": "Debian 13", "bookworm": "Debian 12"}
BASE_PACKAGES = "systemd,systemd-sysv,dbus,openssh-server,python3,iproute2"
# Bump when the base recipe changes, so cached base filesystems are rebuilt.
BASE_RECIPE = "3"

# Pebble 2.10 (ARI, profiles), unpacked from Debian's package by `make tools` (Makefile, PEBBLE).
PEBBLE_BIN = REPO / "build" / "pebble" / "usr" / "bin"
DNS_PORT = 8053
# Knot DNS, authoritative for the lab's zone and taking RFC 2136 updates signed with a TSIG
# key: what a DNS-01 certificate's TXT records go through (certificate_source acme_dns).
KNOT_DNS_PORT = 8054
KNOT_BIN = REPO / "build" / "knot"
KNOT_TSIG_KEY = "wssfleet-lab-acme"
CHALLTESTSRV_MANAGEMENT_PORT = 8055
# The stand-in for the Cloudflare and Route 53 APIs (lab/dns_api.py), writing to Knot's zone.
DNS_API_PORT = 8056


@dataclass(frozen=True)
class AcmeServer:
    """One Pebble: its ports on the bridge address and its ACME profiles (name: lifetime)."""

    name: str
    port: int
    management_port: int
    profiles: dict[str, int]
    root_file: str
    # Where it resolves names to validate: pebble-challtestsrv (every name is the front door),
    # or Knot for the CA that validates DNS-01 through real dynamic updates.
    dns_port: int = DNS_PORT
    # Whether an order may reuse a valid authorization of the same account (Pebble's default
    # does for half of them, at random).
    reuses_authorizations: bool = True


CLASSIC_LIFETIME_SECONDS = 90 * 24 * 3600
# The lab's CA issues 90-day certificates, like Let's Encrypt's classic profile (Pebble's own
# default is five years); it offers that profile only, since Pebble gives an order that names
# none a profile at random. A second CA also offers `shortlived`: 4-minute certificates, so
# that renewals on schedule through cron can be watched in a test (cron's grain is a minute,
# and a certificate must outlive the wait for the first run after its renewal time).
STANDARD_CA = AcmeServer("pebble", 14000, 15000, {"classic": CLASSIC_LIFETIME_SECONDS}, "root.pem")
SHORT_LIVED_PROFILE = "shortlived"
SHORT_LIVED_CA = AcmeServer(
    "pebble-short-lived",
    14001,
    15001,
    {"classic": CLASSIC_LIFETIME_SECONDS, SHORT_LIVED_PROFILE: 240},
    "short-lived-root.pem",
)
# A third, resolving through Knot: certificates over DNS-01, wildcards among them.
DNS01_CA = AcmeServer(
    "pebble-dns01",
    14002,
    15002,
    {"classic": CLASSIC_LIFETIME_SECONDS},
    "dns01-root.pem",
    dns_port=KNOT_DNS_PORT,
    reuses_authorizations=False,
)
ACME_SERVERS = (STANDARD_CA, SHORT_LIVED_CA, DNS01_CA)


class LabError(RuntimeError):
    """The lab cannot be built or used here; the message says why and what to do."""


@dataclass(frozen=True)
class Host:
    name: str
    address: str

    @property
    def machine(self) -> str:
        return MACHINE_PREFIX + self.name

    @property
    def root(self) -> Path:
        return MACHINES_DIR / self.machine


@dataclass(frozen=True)
class LabSettings:
    workers: int
    subnet: ipaddress.IPv4Network
    domain: str
    suite: str = next(iter(SUITES))
    masters: int = 2

    @classmethod
    def from_environment(cls) -> LabSettings:
        raw_workers = os.environ.get("LAB_WORKERS", "2")
        if not raw_workers.isdigit() or not 1 <= int(raw_workers) <= 8:
            raise LabError(f"LAB_WORKERS={raw_workers!r}: give a number of workers from 1 to 8")
        raw_subnet = os.environ.get("LAB_SUBNET", "10.213.77.0/24")
        try:
            subnet = ipaddress.IPv4Network(raw_subnet)
        except ValueError as error:
            raise LabError(
                f"LAB_SUBNET={raw_subnet!r}: {error}; give e.g. 10.213.77.0/24"
            ) from None
        if subnet.prefixlen > 26 or not subnet.is_private:
            raise LabError(f"LAB_SUBNET={raw_subnet!r}: give a private /24 to /26 network")
        domain = os.environ.get("LAB_DOMAIN", "wss.lab.test")
        # The lab's domain becomes the deployment's `domain`: checked by the same rule.
        try:
            TypeAdapter(DnsName).validate_python(domain)
        except ValidationError:
            raise LabError(
                f"LAB_DOMAIN={domain!r}: give a lower-case DNS name like wss.lab.test"
            ) from None
        raw_masters = os.environ.get("LAB_MASTERS", "2")
        if raw_masters not in ("1", "2", "3"):
            raise LabError(f"LAB_MASTERS={raw_masters!r}: give 1, 2 or 3 masters")
        suite = os.environ.get("LAB_SUITE", next(iter(SUITES)))
        if suite not in SUITES:
            choices = ", ".join(f"{name} ({release})" for name, release in SUITES.items())
            raise LabError(f"LAB_SUITE={suite!r}: give one of {choices}")
        return cls(int(raw_workers), subnet, domain, suite, int(raw_masters))

    @property
    def release(self) -> str:
        return SUITES[self.suite]

    @property
    def base_dir(self) -> Path:
        return MACHINES_DIR / f"{BASE_PREFIX}-{self.suite}"

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def master(self) -> Host:
        return self.master_hosts[0]

    @property
    def master_hosts(self) -> list[Host]:
        """The first is "master" at .10 (a one-master lab's name and address), then master2
        and master3 at .32 and .33, clear of the workers' .11 to .18."""
        first = Host("master", str(self.subnet.network_address + 10))
        return [first] + [
            Host(f"master{n}", str(self.subnet.network_address + 30 + n))
            for n in range(2, self.masters + 1)
        ]

    @property
    def front_door(self) -> str:
        """The floating address/prefix the masters' keepalived moves (several masters), on
        the bridge's network; the lab's DNS resolves the domain to it."""
        if self.masters < 2:
            return ""
        return f"{self.subnet.network_address + 100}/{self.subnet.prefixlen}"

    @property
    def front_door_address(self) -> str:
        """What clients reach: the front door, or the one master."""
        return self.front_door.partition("/")[0] or self.master.address

    @property
    def worker_hosts(self) -> list[Host]:
        return [
            Host(f"worker{n}", str(self.subnet.network_address + 10 + n))
            for n in range(1, self.workers + 1)
        ]

    @property
    def hosts(self) -> list[Host]:
        return [*self.master_hosts, *self.worker_hosts]

    def acme_directory(self, server: AcmeServer = STANDARD_CA) -> str:
        return f"https://{self.gateway}:{server.port}/dir"
