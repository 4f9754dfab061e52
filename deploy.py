"""wssfleet's pyinfra entry point: routes each host to its roles by inventory group.

    pyinfra inventory/lab.py deploy.py     (what `make deploy` runs after its checks)

The inventory is validated first (wssfleet/fleet/settings.py): a bad setting stops the
deploy before any operation runs.
"""

from pyinfra import host, inventory
from pyinfra.facts.server import Command

from roles import base, certificates, firewall, haproxy, redis, workers
from wssfleet.fleet.inventory import from_inventory

fleet = from_inventory(inventory)
secrets = fleet.secrets()
roles = fleet.roles_of(host.name)


def cpu_count(name: str) -> int:
    return int(inventory.get_host(name).get_fact(Command, "nproc"))


def ports_of(name: str) -> list[int]:
    processes = fleet.settings.worker_processes
    return fleet.worker_ports(cpu_count(name) if processes == "auto" else processes)


node = next(node for node in fleet.nodes if node.name == host.name)
service_ports = ports_of(host.name) if "worker" in roles else []

base.apply()
firewall.apply(fleet, service_ports)
if "redis" in roles:
    redis.apply(fleet, secrets["redis_password"])
if "worker" in roles:
    workers.apply(fleet, node, service_ports, secrets)
if "master" in roles:
    backends = [
        haproxy.Backend(f"{worker.name}-{port}", worker.address, port)
        for worker in fleet.workers
        for port in ports_of(worker.name)
    ]
    haproxy.check_open_files(fleet.settings.haproxy_maxconn)
    haproxy.apply(fleet, backends)
    certificates.apply(fleet)
