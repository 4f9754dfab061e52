#!/usr/bin/python3
"""A planned move of the front door that no client notices, on the masters (`wssfleet
front-door move`, `make drain-master`; wssfleet_control/front_door_move.py runs each step).

Moving the floating address alone would cut every WebSocket through the old holder: their
next packets reach the new holder, whose kernel knows no such connection and resets it. So:

1. ``forward`` (the new holder): while the handover lasts, any packet for the front door that
   is not part of a connection this master accepted (its SYN seen here) goes on, unchanged, to
   the old holder's link-layer address (nftables, netdev ingress: before this host's own
   stack, which would reset it).
2. ``release`` (the old holder): the front door's address also on loopback (scope host, not
   announced: arp_ignore), so that it keeps answering those packets once keepalived drops the
   address; then keepalived is told to give the front door away (its check fails while
   FRONT_DOOR_RELEASE exists), which it does at once with a priority-0 advert.
3. ``shed`` (the old holder): the built-in service's instances close the clients that came
   through this master with 1012, evenly over the drain window; they reconnect through the new
   holder (with ``since``: nothing missed). Apps' clients cannot be asked: their sessions
   are shut down over the same window (they reconnect after 1006).
4. ``sessions``: how many clients this master's HAProxy still holds (0: done).
5. ``end`` (both): everything above undone; the old holder is a backup again.

    front_door_handover.py forward ADDRESS OLD_HOLDER_ADDRESS OWN_ADDRESS
    front_door_handover.py release ADDRESS OWN_ADDRESS
    front_door_handover.py shed OWN_ADDRESS SECONDS
    front_door_handover.py sessions MASTER_ADDRESS...
    front_door_handover.py end ADDRESS OWN_ADDRESS

Standard library only; run as root.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import haproxy_runtime  # beside this file on the host
from layout import BACKEND, FRONT_DOOR_RELEASE, HANDOVER_STATE

TABLE = "wssfleet_handover"
# Connections the new holder accepted during a handover (one entry per client address and
# port): bounded, and forgotten after an hour, whatever a crowd of clients does.
ACCEPTED_MAX = 65536
# The old holder must not answer ARP for the address it keeps on loopback (arp_ignore 1:
# only for addresses on the asking interface), nor use it as an ARP source (arp_announce 2).
ARP_SETTINGS = {"arp_ignore": "1", "arp_announce": "2"}


def interface_of(address: str) -> str:
    """The interface that holds ``address`` (this master's own private address)."""
    shown = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "to", address], capture_output=True, text=True
    ).stdout.split()
    if len(shown) < 2:
        raise SystemExit(f"no interface holds {address}")
    return shown[1]


def nft(rules: str) -> None:
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)


def forward(address: str, old_holder: str, own: str) -> int:
    device = interface_of(own)
    front_door = f"ip daddr {address} tcp dport {{ 80, 443 }}"
    client = "ip saddr . tcp sport"
    nft(
        f"""table netdev {TABLE} {{
    set accepted {{
        type ipv4_addr . inet_service
        size {ACCEPTED_MAX}
        flags dynamic, timeout
        timeout 1h
    }}
    chain ingress {{
        type filter hook ingress device "{device}" priority -500; policy accept;
        {front_door} tcp flags & (syn | ack) == syn update @accepted {{ {client} }}
        {front_door} {client} != @accepted fwd ip to {old_holder} device "{device}"
    }}
}}"""
    )
    print(json.dumps({"forwarding": address, "to": old_holder, "device": device}))
    return 0


def sysctl(path: str, value: str | None = None) -> str:
    name = f"/proc/sys/net/ipv4/conf/{path}"
    if value is not None:
        with open(name, "w") as handle:
            handle.write(value)
    with open(name) as handle:
        return handle.read().strip()


def release(address: str, own: str) -> int:
    device = interface_of(own)
    if not os.path.exists(HANDOVER_STATE):
        before = {name: sysctl(f"{device}/{name}") for name in ARP_SETTINGS}
        with open(HANDOVER_STATE, "w") as handle:
            json.dump({"device": device, "sysctl": before}, handle)
    for name, value in ARP_SETTINGS.items():
        sysctl(f"{device}/{name}", value)
    present = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", "lo", "to", address],
        capture_output=True,
        text=True,
    ).stdout
    if not present:
        subprocess.run(
            ["ip", "addr", "add", f"{address}/32", "dev", "lo", "scope", "host"], check=True
        )
    open(FRONT_DOOR_RELEASE, "w").close()
    print(json.dumps({"released": address, "kept_on": "lo"}))
    return 0


def shed(own: str, seconds: float) -> int:
    """Ask each instance of the built-in service to close the clients that came through this
    master (their TCP peer is its address), and shut down apps' sessions, over ``seconds``."""
    asked = {}
    for line in haproxy_runtime.ask(f"show servers state {BACKEND}").splitlines():
        fields = line.split()
        # be_id be_name srv_id srv_name srv_addr ... srv_port is the 19th field.
        if len(fields) > 18 and fields[1] == BACKEND:
            instance = f"{fields[4]}:{fields[18]}"
            try:
                asked[fields[3]] = haproxy_runtime.shed(instance, 1_000_000, seconds, via=own)
            except OSError as error:
                asked[fields[3]] = f"failed: {error}"
    apps = [
        line.split(":", 1)[0]
        for line in haproxy_runtime.ask("show sess").splitlines()
        if " be=app_" in line
    ]
    started = time.monotonic()
    for n, session in enumerate(apps):
        time.sleep(max(0.0, started + (n + 0.5) * seconds / len(apps) - time.monotonic()))
        haproxy_runtime.ask(f"shutdown session {session}")
    print(json.dumps({"instances": asked, "app_sessions_shut": len(apps)}))
    return 0


def sessions(masters: list[str]) -> int:
    """The clients this master's HAProxy holds: sessions to the built-in service or an app,
    but not the masters' own canaries (from ``masters``' addresses or this host's: the front
    door's address is local on the old holder while the handover lasts, and on the new one
    after it, so a canary's close to it never leaves that host, and HAProxy's session waits
    for the service's close timeout)."""
    shown = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True)
    own = {line.split()[3].split("/")[0] for line in shown.stdout.splitlines()} | set(masters)
    held = 0
    for line in haproxy_runtime.ask("show sess").splitlines():
        source = re.search(r" src=([0-9.]+):", line)
        backend = re.search(r" be=(\S+)", line)
        if not source or not backend or source.group(1) in own:
            continue
        if backend.group(1) == BACKEND or backend.group(1).startswith("app_"):
            held += 1
    print(json.dumps({"sessions": held}))
    return 0


def end(address: str, own: str) -> int:
    subprocess.run(["nft", "delete", "table", "netdev", TABLE], capture_output=True)
    subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], capture_output=True)
    if os.path.exists(HANDOVER_STATE):
        with open(HANDOVER_STATE) as handle:
            state = json.load(handle)
        for name, value in state["sysctl"].items():
            sysctl(f"{state['device']}/{name}", value)
        os.unlink(HANDOVER_STATE)
    if os.path.exists(FRONT_DOOR_RELEASE):
        os.unlink(FRONT_DOOR_RELEASE)
    print(json.dumps({"ended": address}))
    return 0


def main(argv: list[str]) -> int:
    match argv:
        case ["forward", address, old_holder, own]:
            return forward(address, old_holder, own)
        case ["release", address, own]:
            return release(address, own)
        case ["shed", own, seconds]:
            return shed(own, float(seconds))
        case ["sessions", *masters]:
            return sessions(masters)
        case ["end", address, own]:
            return end(address, own)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
