"""What each host records of the secrets it was last deployed with: a fingerprint of each
(a hash of a 256-bit random value, which tells nothing of it), never the value.

Secrets are made on the control machine by the first deploy that lacks them. A second
operator or a CI runner without the deployment's secrets file would make new ones and deploy
them: every token the application mints would fail, the workers would lose Redis. Before a
deploy (or a plan) touches anything, the hosts' records are compared with this machine's
file; any secret they run with that the file does not hold stops it, naming the file, the
secrets and the hosts, and how to go on. A rotation on purpose is not a fork: the key that
``rotate-secret`` replaced is still in the file (the previous key), or its fingerprint is
(a revoked key).
"""

from __future__ import annotations

import json

from wssfleet_control import secrets
from wssfleet_control.deployment import DeployError
from wssfleet_control.hostside.layout import SECRET_RECORD


def record(stored: dict[str, str]) -> str:
    """The record a host keeps of the secrets this deploy gives the fleet."""
    made = {
        name: secrets.fingerprint(name, stored[name])
        for name in secrets.NAMES
        if stored.get(name) and stored[name] != secrets.NOT_YET
    }
    return json.dumps(made, indent=1, sort_keys=True) + "\n"


def conflicts(stored: dict[str, str], recorded: dict[str, dict[str, str]]) -> dict[str, list]:
    """Each secret a host's record names with a value ``stored`` does not hold (missing, or
    another one): the hosts, by secret."""
    accepted: dict[str, set[str]] = {}
    for name in secrets.NAMES:
        value = stored.get(name)
        accepted[name] = (
            {secrets.fingerprint(name, value)} if value and value != secrets.NOT_YET else set()
        )
    if stored.get(secrets.PREVIOUS):
        accepted["jwt_secret"].add(secrets.fingerprint("jwt_secret", stored[secrets.PREVIOUS]))
    accepted["jwt_secret"].update(stored.get(secrets.REVOKED, "").split())
    found: dict[str, list] = {}
    for host, fingerprints in sorted(recorded.items()):
        for name, seen in sorted(fingerprints.items()):
            if name in accepted and seen not in accepted[name]:
                found.setdefault(name, []).append(host)
    return found


def refuse_a_fork(session) -> None:
    """DeployError unless every host's record agrees with this machine's secrets file (the
    one of the inventory that ``wssfleet_inventory`` names; a host without a record agrees:
    a first deploy, or one from before records)."""
    inventory_path = session.fleet.inventory_path
    session.connect()
    recorded = {}
    for node in session.fleet.nodes:
        answer = session.on(node.name, f"cat {SECRET_RECORD} 2>/dev/null || true")
        if not answer.ok:
            raise DeployError(f"cannot read {SECRET_RECORD} on {node.name}: {answer.stderr}")
        if answer.stdout.strip():
            try:
                recorded[node.name] = json.loads(answer.stdout)
            except ValueError:
                raise DeployError(
                    f"{SECRET_RECORD} on {node.name} is not JSON: remove it if no deploy is "
                    "running, and deploy again"
                ) from None
    stored = session.fleet.secrets(create=False)
    found = conflicts(stored, recorded)
    if not found:
        return
    path = secrets.path_for(inventory_path)
    holds = "does not exist" if not path.exists() else "holds other values"
    which = "; ".join(f"{name} on {', '.join(hosts)}" for name, hosts in found.items())
    raise DeployError(
        f"the hosts run with secrets this machine does not have, and {path} {holds} ({which}). "
        "Deploying would replace them: every token the application mints would fail and the "
        f"workers would lose Redis until each was restarted. Copy {path} from the machine that "
        "deployed last (or write it from your vault) and deploy again; to replace them on "
        "purpose, deploy with --replace-secrets"
    )
