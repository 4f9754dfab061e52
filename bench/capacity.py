"""The capacity rows of `make bench` (alone: `make bench-capacity`): one service process of each
side holding as many idle connections as this machine's open-file limit lets one process hold,
reached directly on loopback (HAProxy's two descriptors a connection would halve the count),
on Redis as deployed. For each side: how many of them are still open after the window, the
process's resident memory per connection, and its CPU per heartbeat round (every connection
sent one heartbeat), counted over the window."""

from __future__ import annotations

import resource
import time
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
    from bench.compare import Load, cpu_seconds, processes

    clients = capacity_connections()
    with processes(side, redis_url, count=1) as ([pid], [port]):
        before_rss = rss_kib(pid)
        load = Load(
            {"url": f"ws://127.0.0.1:{port}", "token": token, "origin": ORIGIN,
             "ca": str(tls / "ca.pem"), "mode": "idle", "clients": clients,
             "seconds": WINDOW_SECONDS}
        )  # fmt: skip
        time.sleep(1)
        rss = rss_kib(pid)
        before_cpu = cpu_seconds([pid])
        done = load.run()
        cpu = cpu_seconds([pid]) - before_cpu
        load.close()
    rounds = WINDOW_SECONDS / BENCH_SETTINGS["heartbeat_interval"]
    return {
        "capacity_open": done["open"],
        "capacity_memory": (rss - before_rss) / clients,
        "capacity_round_cpu": cpu / rounds * 1000,
    }
