"""The lab bridge and the NAT that lets hosts reach the Debian mirror, and nothing more."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

from lab.config import BRIDGE, NFT_TABLE, LabError, LabSettings
from lab.processes import on_machine

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def bridge_exists() -> bool:
    return on_machine("ip", "link", "show", BRIDGE, check=False, quiet=True).returncode == 0


def nat_exists() -> bool:
    return (
        on_machine("nft", "list", "table", "inet", NFT_TABLE, check=False, quiet=True).returncode
        == 0
    )


def check_subnet_is_free(settings: LabSettings) -> None:
    """Refuse a subnet that overlaps a route of this machine that is not the lab's."""
    routes = json.loads(on_machine("ip", "-j", "-4", "route", "show").stdout or "[]")
    for route in routes:
        destination = route.get("dst", "")
        if destination in ("default", "") or route.get("dev") == BRIDGE:
            continue
        network = ipaddress.IPv4Network(
            destination if "/" in destination else destination + "/32", strict=False
        )
        if network.overlaps(settings.subnet):
            raise LabError(
                f"LAB_SUBNET {settings.subnet} overlaps this machine's route {destination} on "
                f"{route.get('dev')}: choose another, e.g. LAB_SUBNET=10.213.78.0/24"
            )


def create(settings: LabSettings) -> str:
    """Bridge, address, forwarding and masquerade; returns the previous ip_forward value."""
    check_subnet_is_free(settings)
    on_machine("ip", "link", "add", BRIDGE, "type", "bridge")
    on_machine(
        "ip", "addr", "add", f"{settings.gateway}/{settings.subnet.prefixlen}", "dev", BRIDGE
    )
    on_machine("ip", "link", "set", BRIDGE, "up")
    previous = IP_FORWARD.read_text().strip()
    IP_FORWARD.write_text("1\n")
    # Only the lab subnet is translated, and only when it leaves by another interface:
    # the hosts reach the package mirror; traffic among them stays on the bridge.
    ruleset = f"""
table inet {NFT_TABLE} {{
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{BRIDGE}" ip saddr {settings.subnet} accept
        oifname "{BRIDGE}" ip daddr {settings.subnet} ct state established,related accept
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {settings.subnet} oifname != "{BRIDGE}" masquerade
    }}
}}
"""
    result = run_nft(ruleset)
    if result:
        raise LabError(f"nftables refused the lab's NAT table: {result}")
    return previous


def run_nft(ruleset: str) -> str:
    result = subprocess.run(["nft", "-f", "-"], input=ruleset, capture_output=True, text=True)
    return result.stderr.strip() if result.returncode else ""


def remove(previous_ip_forward: str | None) -> None:
    if nat_exists():
        on_machine("nft", "delete", "table", "inet", NFT_TABLE)
    if bridge_exists():
        on_machine("ip", "link", "delete", BRIDGE)
    if previous_ip_forward in ("0", "1"):
        IP_FORWARD.write_text(previous_ip_forward + "\n")
