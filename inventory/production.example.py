"""A real deployment: copy to inventory/production.py, fill in, then
`make deploy INVENTORY=inventory/production.py`.

Prerequisites (README, 'Deploying to real servers'): Debian 13 or 12 hosts reachable by SSH as a
user with root (or sudo), DNS A/AAAA records of every domain pointing at the master, and
ports 80 and 443 of the master open to the internet (Let's Encrypt validates on port 80).
"""

# SSH settings shared by every host; any pyinfra ssh_* option works here.
_ssh = {
    "ssh_user": "root",
    "ssh_key": "~/.ssh/id_ed25519",
    # With a non-root ssh_user, add "_sudo": True (passwordless sudo on the hosts).
}

# The master terminates TLS (HAProxy) and, by default, runs Redis.
# ssh_hostname: where the control machine reaches the host.
# private_address: where the other hosts reach it (defaults to ssh_hostname).
master = [
    ("lb1", {"ssh_hostname": "203.0.113.10", "private_address": "10.0.0.10", **_ssh}),
]
workers = [
    ("ws1", {"ssh_hostname": "203.0.113.11", "private_address": "10.0.0.11", **_ssh}),
    ("ws2", {"ssh_hostname": "203.0.113.12", "private_address": "10.0.0.12", **_ssh}),
]
# Redis runs on the master unless you name another host here.
redis = ["lb1"]
# Prometheus (and its alert rules) runs on the master unless you name another host here.
monitoring = ["lb1"]

all = (
    ["lb1", "ws1", "ws2"],
    {
        "wssfleet_inventory": __file__,
        # Every setting and its default: docs/settings.md.
        "wssfleet": {
            "domain": "ws.example.com",
            "extra_domains": [],
            # Start with letsencrypt-staging; switch to letsencrypt once it works.
            "acme_server": "letsencrypt-staging",
            "acme_email": "ops@example.com",
        },
    },
)
