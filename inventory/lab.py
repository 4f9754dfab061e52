"""The lab: hosts made by `make lab-up`, read from .lab/lab.json so the two never disagree.

The lab's ACME server is Pebble on the lab bridge; its CA bundle tells certbot to trust it.
"""

import json

from wssfleet_control.checkout import LAB_STATE, REPO

LAB_JSON = LAB_STATE / "lab.json"

if not LAB_JSON.exists():
    raise SystemExit(f"the lab is not up ({LAB_JSON} is missing): run 'make lab-up'")

_lab = json.loads(LAB_JSON.read_text())
# Lab hosts are rebuilt at will and get new host keys each time: do not pin them.
_ssh = {
    "ssh_user": _lab["ssh_user"],
    "ssh_key": _lab["ssh_key"],
    "ssh_known_hosts_file": "/dev/null",
    "ssh_strict_host_key_checking": "no",
}

master = [(node["name"], {"ssh_hostname": node["address"], **_ssh}) for node in _lab["masters"]]
workers = [(node["name"], {"ssh_hostname": node["address"], **_ssh}) for node in _lab["workers"]]
# With two masters, Redis is on both (a primary and a replica): the Sentinels run on them and
# on the first worker.
redis = [name for name, _ in master]

all = (
    [name for name, _ in master + workers],
    {
        "wssfleet_inventory": __file__,
        "wssfleet": {
            "domain": _lab["domain"],
            "acme_server": _lab["acme_directory"],
            "acme_ca_bundle": _lab["acme_ca_bundle"],
            # Every Pebble's root: the masters check each other's certificates with them.
            "acme_root_bundle": _lab["acme_roots"],
            # Lab hosts inherit this machine's open-file limit (20000 where it cannot be
            # raised); HAProxy needs two descriptors a connection.
            "haproxy_maxconn": 9000,
            # A lab instance holds a few hundred clients at most: 5 s moves them at well under
            # the per-source connection rate, and halves every rollout's wait (default 10).
            "drain_seconds": 5,
            # The masters' floating address on the lab bridge (none with one master).
            "front_door_address": _lab["front_door"],
            # The team's own WebSocket servers beside the built-in service (docs/apps.md):
            # seed 000's echo (also on a domain of its own), seed 001's chat across both
            # workers through Redis, and a Python app. Absolute: inventories derived from this
            # one live elsewhere.
            "apps": {
                "echo": {
                    "source": str(REPO / "examples" / "echo-node"),
                    "command": "node server.js",
                    "path": "/echo",
                    "health_path": "/healthz",
                    "metrics_path": "/metrics",
                    "port": 8101,
                    "stop_timeout": 10,
                },
                "chat": {
                    "source": str(REPO / "examples" / "chat-node"),
                    "command": "node server.js",
                    "path": "/chat",
                    "health_path": "/healthz",
                    # Its clients move over drain_seconds before a restart, not at once.
                    "drain_path": "/drain",
                    "port": 8111,
                    "redis": True,
                    "stop_timeout": 10,
                },
                # The same echo on a domain of its own (every path there is the app's).
                "domain-echo": {
                    "source": str(REPO / "examples" / "echo-node"),
                    "command": "node server.js",
                    "domain": f"echo.{_lab['domain']}",
                    "health_path": "/healthz",
                    "port": 8131,
                    "workers": ["worker1"],
                    "stop_timeout": 10,
                },
                "pyecho": {
                    "source": str(REPO / "examples" / "echo-python"),
                    "command": "python app.py",
                    "path": "/pyecho",
                    "health_path": "/healthz",
                    "port": 8121,
                    # It uses neither: its Redis user is there for the isolation test, its
                    # secret for the environment's.
                    "redis": True,
                    "secrets": ["SESSION_KEY"],
                    "stop_timeout": 10,
                },
            },
        },
    },
)
