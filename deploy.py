"""wssfleet's pyinfra deploy: routes each host to its roles by inventory group.

`wssfleet deploy` (make deploy) and `wssfleet plan` (make plan) run it through pyinfra's API
after checking the inventory. It converges every host to the wanted state but restarts no
running instance: the rollout controller (wssfleet_control/rollout.py) does that afterwards,
one instance at a time, each verified before the next.
"""

from pyinfra import host, inventory, state

from roles import (
    apps,
    base,
    canary,
    certificates,
    firewall,
    front_door,
    haproxy,
    monitoring,
    redis,
    units_stay_running,
    workers,
)
from wssfleet_control import deployment
from wssfleet_control.facts import instance_ports
from wssfleet_control.hostside.layout import server_name

run = deployment.of(state)
fleet = run.fleet
roles = fleet.roles_of(host.name)
node = fleet.node(host.name)
service_ports = instance_ports(fleet, host) if "workers" in roles else []


def every_instance() -> list[tuple[str, str, int]]:
    """(worker, address, port) of every service process in the fleet."""
    return [
        (worker.name, worker.address, port)
        for worker in fleet.workers
        for port in instance_ports(fleet, inventory.get_host(worker.name))
    ]


base.release()
base.apply(run)
firewall.apply(run, service_ports)
monitoring.node_exporter(run, node)
if "redis" in roles:
    redis.apply(run)
    monitoring.redis_exporter(run)
if "sentinel" in roles:
    redis.sentinel(run)
else:
    redis.sentinel_retired()
if "workers" in roles:
    workers.apply(run, node, service_ports)
    apps.apply(run, node)
if "master" in roles:
    haproxy.apply(
        run,
        [
            haproxy.Backend(server_name(name, port), address, port, name)
            for name, address, port in every_instance()
        ],
        [
            haproxy.AppBackend(
                name,
                app,
                [
                    haproxy.Backend(server_name(worker.name, port), worker.address, port)
                    for worker in fleet.app_workers(name)
                    for port in app.ports()
                ],
            )
            for name, app in sorted(fleet.settings.apps.items())
        ],
    )
    if fleet.front_door:
        front_door.apply(run)
    canary.apply(
        run,
        [
            (server_name(name, port), address, port, name)
            for name, address, port in every_instance()
        ],
    )
    if not fleet.settings.acme:
        certificates.provided(run)
    else:
        certificates.installed(run)
        if host.name == fleet.master.name:
            certificates.apply(run)
        else:
            certificates.standby(run)
        if len(fleet.masters) > 1:
            certificates.sync(run)
if "monitoring" not in roles:
    monitoring.prometheus_retired()
else:
    monitoring.prometheus(
        run,
        [
            monitoring.ScrapedInstance(
                host=name,
                address=address,
                metrics_port=fleet.settings.metrics_port(port),
                server=server_name(name, port),
            )
            for name, address, port in every_instance()
        ],
    )
# Any host: one that was a worker may still run an app.
apps.retired(run, node)
units_stay_running()
