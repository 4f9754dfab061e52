"""Every service instance on every worker: running, healthy, unprivileged, limited."""

from __future__ import annotations

import json

from wssfleet_control.hostside import layout
from wssfleet_control.hostside.layout import SERVICE_ENVIRONMENT, instance_unit


def main_pid(host, port: int) -> int:
    return int(host.check_output(f"systemctl show -p MainPID --value {instance_unit(port)}"))


def test_instance_is_active_and_enabled(on, worker_instance):
    node, port = worker_instance
    service = on(node).service(f"{instance_unit(port)}")
    assert service.is_running, f"{instance_unit(port)} is not running on {node.name}"
    assert service.is_enabled, f"{instance_unit(port)} is not enabled on {node.name}"


def test_instance_is_healthy(on, worker_instance, fleet):
    node, port = worker_instance
    # With internal_tls, over TLS, checked against the deployment's CA.
    scheme, context = "http", "None"
    if fleet.settings.internal_tls:
        ca = f"{layout.WORKER_TLS_DIRECTORY}/ca.pem"
        scheme, context = "https", f'ssl.create_default_context(cafile="{ca}")'
    probe = (
        "python3 -c 'import ssl, urllib.request; "
        f'print(urllib.request.urlopen("{scheme}://{node.address}:{port}/healthz", timeout=5, '
        f"context={context}).read().decode())'"
    )
    result = on(node).run(probe)
    assert result.rc == 0, f"{node.name}:{port} /healthz: {result.stderr.strip()[-200:]}"
    health = json.loads(result.stdout)
    assert health["status"] == "ok" and health["redis"] == "connected", health


def test_instance_runs_as_the_unprivileged_user(on, worker_instance):
    node, port = worker_instance
    host = on(node)
    uid = host.check_output(f"awk '/^Uid:/ {{print $2}}' /proc/{main_pid(host, port)}/status")
    assert uid == host.check_output("id -u wssfleet") and uid != "0"


def test_instance_has_high_open_file_limit_and_hardening(on, worker_instance):
    node, port = worker_instance
    host = on(node)
    limits = host.file(f"/proc/{main_pid(host, port)}/limits").content_string
    soft = int(next(line for line in limits.splitlines() if "open files" in line).split()[3])
    assert soft >= 16384, soft
    show = host.check_output(
        f"systemctl show -p NoNewPrivileges,ProtectSystem,PrivateTmp,RestrictAddressFamilies "
        f"{instance_unit(port)}"
    )
    assert "NoNewPrivileges=yes" in show and "ProtectSystem=strict" in show
    assert "PrivateTmp=yes" in show and "AF_INET" in show


def test_secrets_file_is_readable_by_the_service_only(on, worker_instance):
    node, _ = worker_instance
    environment = on(node).file(SERVICE_ENVIRONMENT)
    assert environment.user == "root" and environment.group == "wssfleet"
    assert environment.mode == 0o640


def test_instance_is_confined_with_a_memory_bound(on, worker_instance, exposure):
    node, port = worker_instance
    host = on(node)
    assert exposure(host, f"{instance_unit(port)}")
    show = host.check_output(f"systemctl show -p MemoryMax,SystemCallFilter {instance_unit(port)}")
    memory_max = int(show.split("MemoryMax=")[1].split()[0])
    assert 256 * 2**20 <= memory_max < 2**62, show


def test_the_firewall_unit_is_confined(on, any_node, exposure):
    assert exposure(on(any_node), "wssfleet-firewall.service")
