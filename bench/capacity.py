"""The capacity rows of `make bench` (alone: `make bench-capacity`): one service process of each
side holding as many idle connections as this machine's open-file limit lets one process hold,
reached directly on loopback (HAProxy's two descriptors a connection would halve the count),
on Redis as deployed. For each side: how many of them are still open after the windows, the
process's resident memory per connection, its CPU per heartbeat round (every connection sent
one heartbeat), counted over an idle window, and the share of one core that the browser
client's path probes add at that size (each connection an empty frame per deployed heartbeat
interval), counted over a second window against an idle one before it and one after.

"""

from __future__ import annotations

import contextlib
import resource
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from bench.loopback import BENCH_SETTINGS, ORIGIN, rss_kib

# Seconds of heartbeats over which the process's CPU is counted.
WINDOW_SECONDS = 10


def capacity_connections() -> int:
    """A quarter of the open-file limit kept for each process's own descriptors (the load
    generator holds one a client under the same limit); at most 15,000, in thousands."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return min(15_000, hard * 3 // 4 // 1000 * 1000)


def measure_capacity(side: str, redis_url: str, tls: Path, token: str) -> dict[str, float]:
    from bench.compare import PRODUCTION_HEARTBEAT, Load, cpu_seconds, processes

    clients = capacity_connections()
    with processes(side, redis_url, count=1) as ([pid], [port]):
        before_rss = rss_kib(pid)
        load = Load(
            {"url": f"ws://127.0.0.1:{port}", "token": token, "origin": ORIGIN,
             "ca": str(tls / "ca.pem"), "mode": "probe", "clients": clients,
             "interval": PRODUCTION_HEARTBEAT, "seconds": WINDOW_SECONDS}
        )  # fmt: skip
        time.sleep(1)
        rss = rss_kib(pid)
        before_cpu = cpu_seconds([pid])
        time.sleep(WINDOW_SECONDS)
        idle_cpu = cpu_seconds([pid]) - before_cpu
        before_cpu = cpu_seconds([pid])
        done = load.run()
        probing_cpu = cpu_seconds([pid]) - before_cpu
        # The heartbeats' own CPU drifts: the probes are counted against the mean of an idle
        # window before them and one after.
        before_cpu = cpu_seconds([pid])
        time.sleep(WINDOW_SECONDS)
        idle_after_cpu = cpu_seconds([pid]) - before_cpu
        load.close()
    rounds = WINDOW_SECONDS / BENCH_SETTINGS["heartbeat_interval"]
    idle_per_second = (idle_cpu + idle_after_cpu) / (2 * WINDOW_SECONDS)
    probes_cpu = max(0.0, probing_cpu - idle_per_second * done["seconds"])
    return {
        "capacity_open": done["open"],
        "capacity_memory": (rss - before_rss) / clients,
        "capacity_round_cpu": idle_cpu / rounds * 1000,
        "capacity_probe_share": probes_cpu / done["seconds"] * 100,
    }


# The lab's master row: clients from this many extra addresses on the lab bridge (each source
# stays well under haproxy_connection_rate_limit), spread over this many token subjects (each
# under connections_per_subject on every instance).
MASTER_SOURCES = 20
MASTER_SUBJECTS = 20
# Bridge addresses counted down from the broadcast address: clear of the e2e tests' (11-42).
FIRST_SOURCE = 60


@contextlib.contextmanager
def bridge_sources(bridge: str, count: int) -> Iterator[list[str]]:
    """``count`` extra addresses of this machine on the lab bridge, removed afterwards."""
    from tests.lab_fleet import add_bridge_address

    added: list[str] = []
    try:
        for n in range(count):
            added.append(add_bridge_address(bridge, FIRST_SOURCE + n))
        yield [interface.partition("/")[0] for interface in added]
    finally:
        for interface in added:
            subprocess.run(["ip", "addr", "del", interface, "dev", bridge], capture_output=True)


def haproxy_rss_kib(lab, master: str) -> int:
    shown = lab.on(master, "ps -C haproxy -o rss=", timeout=10).stdout
    return sum(int(value) for value in shown.split())


def measure_master() -> dict[str, float] | None:
    """The lab's master holding haproxy_maxconn WebSockets through TLS to the workers: how
    many it held, and its HAProxy's memory per connection. None when the lab is not up."""
    from bench.compare import Load
    from lab import core
    from lab.config import BRIDGE, LabSettings
    from tests.lab_fleet import Lab
    from wssfleet import auth

    if not core.is_up(core.load_state(), LabSettings.from_environment()):
        return None
    lab = Lab()
    maxconn = lab.fleet.settings.haproxy_maxconn
    [holder] = lab.front_door_holder() or [lab.fleet.master.name]
    secret = lab.fleet.secrets()["jwt_secret"]
    tokens = [
        auth.mint(secret, f"capacity-{number}", 3600, subscribe=["*"])
        for number in range(MASTER_SUBJECTS)
    ]
    with bridge_sources(BRIDGE, MASTER_SOURCES) as sources:
        before = haproxy_rss_kib(lab, holder)
        load = Load(
            {"url": f"wss://{lab.domain}", "address": lab.master_address, "tokens": tokens,
             "sources": sources, "origin": f"https://{lab.domain}", "ca": lab.root_bundle,
             "mode": "idle", "clients": maxconn, "tolerate": True, "handshakeSeconds": 20,
             "seconds": WINDOW_SECONDS}
        )  # fmt: skip
        time.sleep(1)
        during = haproxy_rss_kib(lab, holder)
        done = load.run()
        load.close()
    return {
        "maxconn": maxconn,
        "held": done["open"],
        "failed": done["failed"],
        "memory": (during - before) / max(1, done["connections"]),
    }
