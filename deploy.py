"""wssfleet's pyinfra deploy: routes each host to its roles by inventory group.

`wssfleet deploy` (make deploy) and `wssfleet plan` (make plan) run it through pyinfra's API
after checking the inventory. It converges every host to the wanted state but restarts no
running instance: the rollout controller (wssfleet_control/rollout.py) does that afterwards,
one instance at a time, each verified before the next.
"""

from pyinfra import host, inventory

from roles import base, certificates, firewall, haproxy, monitoring, redis, workers
from wssfleet_control import internal_tls
from wssfleet_control.run import current_run

run = current_run()
fleet = run.fleet
roles = fleet.roles_of(host.name)
node = next(node for node in fleet.nodes if node.name == host.name)
service_ports = workers.ports(fleet, host) if "worker" in roles else []


def every_instance() -> list[tuple[str, str, int]]:
    """(worker, address, port) of every service process in the fleet."""
    return [
        (worker.name, worker.address, port)
        for worker in fleet.workers
        for port in workers.ports(fleet, inventory.get_host(worker.name))
    ]


base.release()
base.apply()
firewall.apply(fleet, service_ports)
monitoring.node_exporter(node)
if "redis" in roles:
    redis.apply(
        fleet,
        run.secrets["redis_password"],
        run.secrets["redis_admin_password"],
        run.secrets["redis_monitor_password"],
        run,
    )
    monitoring.redis_exporter(fleet, run.secrets["redis_monitor_password"])
if "worker" in roles:
    workers.apply(run, node, service_ports)
if "master" in roles:
    haproxy.check_open_files(fleet.settings.haproxy_maxconn)
    haproxy.apply(
        fleet,
        [
            haproxy.Backend(haproxy.server_name(name, port), address, port)
            for name, address, port in every_instance()
        ],
        run.secrets["internal_key"],
        internal_tls.ca_certificate(run.secrets),
    )
    certificates.apply(run)
if "monitoring" not in roles:
    monitoring.prometheus_retired()
else:
    monitoring.prometheus(
        fleet,
        [
            monitoring.ScrapedInstance(
                host=name,
                address=address,
                metrics_port=fleet.settings.metrics_port(port),
                server=haproxy.server_name(name, port),
            )
            for name, address, port in every_instance()
        ],
    )
