"""nftables on every host: SSH, the master's 80/443, Redis from the workers, service ports
from the master; everything else dropped. The candidate ruleset is checked with
``nft -c`` before it replaces the live one."""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, systemd

from roles import activate_candidate, template
from wssfleet_control.inventory import Fleet

LIVE = "/etc/nftables.conf"
CANDIDATE = "/etc/nftables.conf.wssfleet-candidate"


@deploy("Firewall")
def apply(fleet: Fleet, service_ports: list[int]) -> None:
    """Load this host's ruleset, checked by ``nft -c`` first.

    + fleet: the checked inventory
    + service_ports: the service ports this host opens to the master (workers only)
    """
    roles = fleet.roles_of(host.name)
    candidate = files.template(
        name="Ensure the candidate nftables ruleset is rendered",
        src=template("firewall", "nftables.conf.j2"),
        dest=CANDIDATE,
        mode="600",
        settings=fleet.settings,
        is_master="master" in roles,
        is_redis="redis" in roles,
        worker_addresses=[worker.address for worker in fleet.workers],
        master_address=fleet.master.address,
        service_ports=service_ports,
    )
    activate_candidate(
        "Ensure the validated nftables ruleset is live",
        candidate,
        CANDIDATE,
        [
            f"nft -c -f {CANDIDATE} || {{ rm -f {CANDIDATE}; exit 1; }}",
            f"install -m 700 {CANDIDATE} {LIVE}",
            f"nft -f {LIVE}",
        ],
    )
    systemd.service(
        name="Ensure nftables loads the ruleset at boot",
        service="nftables.service",
        running=True,
        enabled=True,
    )
