#!/usr/bin/env python3
"""Live figures from the fleet's Prometheus, for `wssfleet status` and the tests; run on the
monitoring host, where Prometheus listens on the private address.

    prometheus_query.py ADDRESS:PORT summary     targets, firing alerts, per-instance figures
    prometheus_query.py ADDRESS:PORT alerts      every alert Prometheus holds, as JSON
    prometheus_query.py ADDRESS:PORT query EXPR  one instant query's result, as JSON

Standard library only: it runs with the host's python3.
"""

from __future__ import annotations

import json
import sys
import urllib.parse
import urllib.request

PER_INSTANCE = {
    "connections": "wssfleet_connections",
    "received_per_second": "sum by (server) (rate(wssfleet_messages_received_total[1m]))",
    # Heartbeats are signs of life, not traffic.
    "delivered_per_second": "sum by (server) "
    '(rate(wssfleet_messages_delivered_total{type!="heartbeat"}[1m]))',
    "drops_per_second": "sum by (server) (rate(wssfleet_drops_total[5m]))",
}


def api(base: str, path: str, **parameters: str) -> object:
    query = f"?{urllib.parse.urlencode(parameters)}" if parameters else ""
    with urllib.request.urlopen(f"http://{base}/api/v1/{path}{query}", timeout=10) as reply:
        answer = json.loads(reply.read())
    if answer.get("status") != "success":
        raise RuntimeError(f"Prometheus answered {answer}")
    return answer["data"]


def query(base: str, expression: str) -> list[dict]:
    return api(base, "query", query=expression)["result"]  # type: ignore[index]


def summary(base: str) -> dict:
    targets = [
        {
            "job": target["labels"].get("job"),
            "host": target["labels"].get("host"),
            "instance": target["labels"].get("instance"),
            "server": target["labels"].get("server"),
            "health": target["health"],
            "error": target.get("lastError", ""),
        }
        for target in api(base, "targets", state="active")["activeTargets"]  # type: ignore[index]
    ]
    figures: dict[str, dict[str, float]] = {}
    for name, expression in PER_INSTANCE.items():
        for sample in query(base, expression):
            server = sample["metric"].get("server", "?")
            figures.setdefault(server, {})[name] = float(sample["value"][1])
    return {
        "targets": targets,
        "alerts": alerts(base),
        "instances": figures,
        "canary": canary(base),
    }


# What each master's canary (canary.py) sees, per worker instance.
CANARY_PER_INSTANCE = {
    "overdue": "wssfleet_canary_overdue_seconds",
    "subscribed": "wssfleet_canary_subscribed",
    "p99": "histogram_quantile(0.99, sum by (host, server, le) "
    "(rate(wssfleet_canary_delivery_seconds_bucket[1m])))",
}


def canary(base: str) -> dict[str, dict]:
    """By master: seconds since its last acknowledged publish, and by instance its figures."""
    found: dict[str, dict] = {}
    for sample in query(base, "wssfleet_canary_since_acknowledged_seconds"):
        master = found.setdefault(sample["metric"].get("host", "?"), {"instances": {}})
        master["since_acknowledged"] = float(sample["value"][1])
    for name, expression in CANARY_PER_INSTANCE.items():
        for sample in query(base, expression):
            master = found.setdefault(sample["metric"].get("host", "?"), {"instances": {}})
            server = master["instances"].setdefault(sample["metric"].get("server", "?"), {})
            # NaN (no delivery in the last minute) is not JSON: None.
            value = float(sample["value"][1])
            server[name] = None if value != value else value
    return found


def alerts(base: str) -> list[dict]:
    found = []
    for alert in api(base, "alerts")["alerts"]:  # type: ignore[index]
        annotations = alert.get("annotations", {})
        found.append(
            {
                "name": alert["labels"].get("alertname"),
                "state": alert["state"],
                "labels": alert["labels"],
                "active_at": alert.get("activeAt"),
                "summary": annotations.get("summary", ""),
                # Where the team reads it (runbook_base_url), else the repository's path.
                "runbook": annotations.get("runbook_url") or annotations.get("runbook", ""),
            }
        )
    return found


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in ("summary", "alerts", "query"):
        print(__doc__, file=sys.stderr)
        return 2
    base, command = argv[0], argv[1]
    if command == "summary":
        print(json.dumps(summary(base)))
    elif command == "alerts":
        print(json.dumps(alerts(base)))
    else:
        print(json.dumps(query(base, argv[2])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
