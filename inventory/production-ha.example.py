"""A deployment with no single point of failure on three hosts: copy to
inventory/production.py, fill in, then `make deploy INVENTORY=inventory/production.py`.

lb1 and lb2 are masters: HAProxy on both and Redis on both (a primary and a replica); ws1 is
the first worker. Three Sentinels watch Redis: on lb1, lb2 and ws1. The domain has one A
record per master (the DNS mode: clients try the next address when one does not answer).
Where the masters share a network segment that clients reach, set front_door_address
instead: one floating address that keepalived moves within seconds, and the domain's one A
record points at it. Add workers as load grows; docs/high-availability.md says what each
fault costs clients.

Prerequisites (README, 'Deploying to real servers'): Debian 13 or 12 hosts reachable by SSH as a
user with root (or sudo), sharing a private network, and ports 80 and 443 of the masters open
to the internet. docs/security.md lists every port, for a cloud's security groups.
"""

_ssh = {
    "ssh_user": "root",
    "ssh_key": "~/.ssh/id_ed25519",
}

master = [
    ("lb1", {"ssh_hostname": "203.0.113.10", "private_address": "10.0.0.10", **_ssh}),
    ("lb2", {"ssh_hostname": "203.0.113.20", "private_address": "10.0.0.20", **_ssh}),
]
workers = [
    ("ws1", {"ssh_hostname": "203.0.113.11", "private_address": "10.0.0.11", **_ssh}),
]
# Redis on both masters: a primary and a replica; the Sentinels run on them and on ws1.
redis = ["lb1", "lb2"]

all = (
    ["lb1", "lb2", "ws1"],
    {
        "wssfleet_inventory": __file__,
        "wssfleet": {
            "domain": "ws.example.com",
            "acme_server": "letsencrypt-staging",
            "acme_email": "ops@example.com",
            # With a segment the clients reach: an unused address of it, with its prefix.
            # "front_door_address": "198.51.100.100/29",
        },
    },
)
