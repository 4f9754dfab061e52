"""nftables on every host: SSH (on the inventory's ssh_port), the master's 80/443, Redis from
the workers, service ports from the master, metrics ports from the monitoring host; everything
else dropped. wssfleet owns one table,
``inet wssfleet``, loaded by its own unit; it never flushes the ruleset, so other tables stay.
The candidate table is checked with ``nft -c`` before it replaces the live one."""

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import FindInFile
from pyinfra.operations import files, systemd

from roles import SERVICE_RETRY, activate_candidate
from wssfleet_control.deployment import DeployRun
from wssfleet_control.facts import InterfaceOf
from wssfleet_control.hostside import layout
from wssfleet_control.hostside.layout import (
    CANARY_METRICS_PORT,
    CONFIG_DIRECTORY,
    HAPROXY_METRICS_PORT,
    NODE_EXPORTER_PORT,
    REDIS_EXPORTER_PORT,
)
from wssfleet_control.inventory import Fleet, Node

LIVE = f"{CONFIG_DIRECTORY}/firewall.nft"
CANDIDATE = f"{CONFIG_DIRECTORY}/firewall.nft.candidate"
UNIT = "/etc/systemd/system/wssfleet-firewall.service"
# Earlier wssfleet versions wrote the host's /etc/nftables.conf (with a flush of every table);
# such a file goes back to Debian's stock one.
HOST_CONFIG = "/etc/nftables.conf"
DEBIAN_STOCK_CONFIG = """#!/usr/sbin/nft -f

flush ruleset

table inet filter {
	chain input {
		type filter hook input priority filter;
	}
	chain forward {
		type filter hook forward priority filter;
	}
	chain output {
		type filter hook output priority filter;
	}
}
"""


@deploy("Firewall")
def apply(run: DeployRun, service_ports: list[int]) -> None:
    """Load this host's table, checked by ``nft -c`` first.

    + run: the deploy (the checked inventory)
    + service_ports: the service ports this host opens to the master (workers only)
    """
    fleet = run.fleet
    roles = fleet.roles_of(host.name)
    # Only its existence: the workers role makes it private to the service's group.
    files.directory(name=f"Ensure {CONFIG_DIRECTORY} exists", path=CONFIG_DIRECTORY)
    candidate = files.template(
        name="Ensure the candidate nftables table is rendered",
        src=run.template("firewall", "wssfleet.nft.j2"),
        dest=CANDIDATE,
        mode="600",
        settings=fleet.settings,
        ssh_port=int(host.data.get("ssh_port") or 22),
        layout=layout,
        is_master="master" in roles,
        is_redis="redis" in roles,
        is_sentinel="sentinel" in roles,
        front_door=fleet.front_door,
        # VRRP only on the interface that holds this master's address (keepalived's).
        vrrp_interface=(
            host.get_fact(InterfaceOf, address=fleet.node(host.name).address) or "lo"
            if fleet.front_door and "master" in roles
            else ""
        ),
        other_masters=[node.address for node in fleet.masters if node.name != host.name],
        redis_clients=addresses(
            [*fleet.workers, *fleet.redis_nodes, *fleet.sentinels], but=host.name
        ),
        sentinel_clients=addresses(
            [*fleet.workers, *fleet.sentinels, *fleet.redis_nodes], but=host.name
        ),
        master_addresses=[node.address for node in fleet.masters],
        # The built-in service's ports, then the apps' here: HAProxy's alone to reach.
        service_ports=service_ports + app_ports(fleet, host.name),
        monitoring_addresses=sorted({node.address for node in fleet.monitors}),
        metrics_ports=metrics_ports(fleet, roles, service_ports),
    )
    activate_candidate(
        "Ensure the validated nftables table is live",
        candidate,
        CANDIDATE,
        [
            f"nft -c -f {CANDIDATE} || {{ rm -f {CANDIDATE}; exit 1; }}",
            f"install -m 600 {CANDIDATE} {LIVE}",
            f"nft -f {LIVE}",
        ],
    )
    unit = files.template(
        name="Ensure the wssfleet-firewall unit loads the table at boot",
        src=run.template("firewall", "wssfleet-firewall.service.j2"),
        dest=UNIT,
        mode="644",
        ruleset=LIVE,
    )
    systemd.service(
        **SERVICE_RETRY,
        name="Ensure wssfleet-firewall is enabled",
        service="wssfleet-firewall.service",
        running=True,
        enabled=True,
        daemon_reload=unit.will_change,
    )
    if host.get_fact(FindInFile, path=HOST_CONFIG, pattern="Managed by wssfleet"):
        files.put(
            name="Ensure the host's nftables.conf is Debian's again, not wssfleet's",
            src=StringIO(DEBIAN_STOCK_CONFIG),
            dest=HOST_CONFIG,
            mode="755",
        )


def metrics_ports(fleet: Fleet, roles: list[str], service_ports: list[int]) -> list[int]:
    """The ports this host opens to the monitoring host: its exporters' and, on a worker,
    each service process's metrics port."""
    ports = [NODE_EXPORTER_PORT]
    if "master" in roles:
        ports += [HAPROXY_METRICS_PORT, CANARY_METRICS_PORT]
    if "redis" in roles:
        ports.append(REDIS_EXPORTER_PORT)
    ports += [fleet.settings.metrics_port(port) for port in service_ports]
    # An app's metrics are on its own ports.
    return ports + [
        port
        for name in fleet.apps_on(host.name)
        if fleet.settings.apps[name].metrics_path
        for port in fleet.settings.apps[name].ports()
    ]


def app_ports(fleet: Fleet, worker: str) -> list[int]:
    """The ports of the apps' instances on the host ``worker`` (none on another host)."""
    return [port for name in fleet.apps_on(worker) for port in fleet.settings.apps[name].ports()]


def addresses(nodes: list[Node], but: str) -> list[str]:
    """The distinct addresses of ``nodes``, except the host named ``but`` (it uses loopback)."""
    return sorted({node.address for node in nodes if node.name != but}) or ["127.0.0.1"]
