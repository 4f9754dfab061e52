#!/usr/bin/python3
"""The rebalancer, on the master: keeps every worker instance within a tolerance of the mean
number of clients. Clients stay where they are, so an instance that comes back, or a worker
that is added, sits nearly empty while the others carry everyone. Every few seconds this reads
each instance's sessions from HAProxy's runtime API and asks the fullest instances to shed
clients with 1012; they reconnect through leastconn to the emptiest. It asks for at most
``rate`` closes a second across the whole fleet, and it stays still while any instance is
not UP (a rollout is draining one, or a failure is being handled). Installed by
roles/haproxy.py; run by wssfleet-rebalancer.service; standard library only.

    rebalancer.py --rate N --interval S --tolerance F --instance SERVER=ADDRESS:PORT ...
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import haproxy_runtime  # beside this file on the host
from layout import BACKEND, STATS_SOCKET


def plan(counts: dict[str, int], tolerance: float, budget: int) -> dict[str, int]:
    """How many clients each instance should shed now: none while every instance is within
    ``tolerance`` of the mean; else the fullest shed down to the mean, ``budget`` in all."""
    if len(counts) < 2:
        return {}
    mean = sum(counts.values()) / len(counts)
    if all(abs(count - mean) <= tolerance * mean for count in counts.values()):
        return {}
    shed: dict[str, int] = {}
    for server, count in sorted(counts.items(), key=lambda item: -item[1]):
        excess = count - math.ceil(mean)
        if excess <= 0 or budget <= 0:
            break
        shed[server] = min(excess, budget)
        budget -= shed[server]
    return shed


def once(instances: dict[str, str], rate: float, interval: float, tolerance: float) -> None:
    rows = [
        row
        for row in haproxy_runtime.servers(STATS_SOCKET)
        if row["backend"] == BACKEND and row["server"] in instances
    ]
    if not rows or not all(row["status"].startswith("UP") for row in rows):
        return
    counts = {row["server"]: int(row["sessions"]) for row in rows}
    for server, count in plan(counts, tolerance, math.floor(rate * interval)).items():
        try:
            answer = haproxy_runtime.shed(instances[server], count, interval)
        except OSError as error:
            answer = f"failed: {error}"
        print(json.dumps({"event": "shed", "server": server, "count": count, "answer": answer}))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rebalancer.py", description=__doc__)
    parser.add_argument("--rate", type=float, required=True, help="closes a second, fleet-wide")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between rounds")
    parser.add_argument("--tolerance", type=float, default=0.2, help="allowed share off the mean")
    parser.add_argument("--instance", action="append", default=[], help="SERVER=ADDRESS:PORT")
    args = parser.parse_args(argv)
    instances = dict(item.split("=", 1) for item in args.instance)
    print(json.dumps({"event": "started", "instances": len(instances), "rate": args.rate}))
    sys.stdout.flush()
    while True:
        started = time.monotonic()
        try:
            once(instances, args.rate, args.interval, args.tolerance)
        except OSError as error:
            print(json.dumps({"event": "error", "error": str(error)}))
        sys.stdout.flush()
        time.sleep(max(0.0, args.interval - (time.monotonic() - started)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
