"""Every app instance (settings: apps) on every worker it runs on: running the release
`current` points at, healthy, as its own unprivileged user, confined, reachable by HAProxy
alone; and every master's HAProxy sees it UP."""

from __future__ import annotations

import json
import shlex

from wssfleet_control.hostside.layout import RUNTIME_HELPER, app_layout, server_name

# Node.js's JIT needs writable and executable memory (MemoryDenyWriteExecute=no).
NODE_EXPOSURE = 2.5


def main_pid(host, name: str, port: int) -> int:
    unit = app_layout(name).unit(port)
    return int(host.check_output(f"systemctl show -p MainPID --value {unit}"))


def test_app_instance_is_active_enabled_and_runs_the_current_release(on, app_instance):
    node, name, port = app_instance
    host, layout = on(node), app_layout(name)
    service = host.service(layout.unit(port))
    assert service.is_running and service.is_enabled, f"{layout.unit(port)} on {node.name}"
    running = host.check_output(f"readlink /proc/{main_pid(host, name, port)}/cwd")
    assert running == host.check_output(f"readlink -f {layout.current}"), running


def test_app_instance_passes_its_health_check(on, app_instance, fleet):
    node, name, port = app_instance
    app = fleet.settings.apps[name]
    check = app.health_path or "tcp"
    program = (
        "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 5)"
        if check == "tcp"
        else "import sys, urllib.request; "
        "urllib.request.urlopen(f'http://{sys.argv[1]}:{sys.argv[2]}{sys.argv[3]}', timeout=5)"
    )
    result = on(node).run(f"python3 -c {shlex.quote(program)} {node.address} {port} {check}")
    assert result.rc == 0, f"{node.name} app {name} {port} {check}: {result.stderr[-300:]}"


def test_app_runs_as_its_own_user_and_cannot_change_its_code(on, app_instance):
    node, name, port = app_instance
    host, layout = on(node), app_layout(name)
    uid = host.check_output(f"awk '/^Uid:/ {{print $2}}' /proc/{main_pid(host, name, port)}/status")
    assert uid == host.check_output(f"id -u {layout.user}")
    assert uid not in ("0", host.check_output("id -u wssfleet"))
    # Root's, and nothing in it writable by group or others.
    writable = host.check_output(
        f"find {layout.releases}/ ! -user root -o -perm /022 ! -type l | head -5"
    )
    assert writable == "", writable


def test_app_environment_is_roots_alone_and_holds_what_the_app_gets(on, app_instance, fleet):
    node, name, _ = app_instance
    environment = on(node).file(app_layout(name).environment)
    assert (environment.user, environment.group, environment.mode) == ("root", "root", 0o600)
    app = fleet.settings.apps[name]
    expected = {"HOST", *app.env, *app.secrets}
    if app.redis:
        expected |= {"REDIS_URL", "REDIS_PREFIX"}
        if fleet.sentinels:
            expected |= {"REDIS_SENTINELS", "REDIS_SENTINEL_NAME", "REDIS_SENTINEL_USER"}
            expected.add("REDIS_SENTINEL_PASSWORD")
        if fleet.settings.internal_tls:
            expected.add("REDIS_CA_FILE")
    names = {
        line.split("=", 1)[0]
        for line in environment.content_string.splitlines()
        if line and not line.startswith("#")
    }
    assert names == expected, (name, sorted(names ^ expected))


def test_app_instance_is_confined_with_a_memory_bound(on, app_instance, exposure, fleet):
    node, name, port = app_instance
    host, unit = on(node), app_layout(name).unit(port)
    node_js = fleet.app_sources[name].runtime == "node"
    assert exposure(host, unit, NODE_EXPOSURE) if node_js else exposure(host, unit)
    memory_max = int(host.check_output(f"systemctl show -p MemoryMax --value {unit}"))
    assert 64 * 2**20 <= memory_max < 2**62, memory_max


def test_haproxy_sees_every_app_instance_up(on, master, fleet):
    servers = json.loads(on(master).check_output(f"python3 {RUNTIME_HELPER} servers"))
    states = {(server["backend"], server["server"]): server["status"] for server in servers}
    for name, app in sorted(fleet.settings.apps.items()):
        backend = app_layout(name).backend
        for node in fleet.app_workers(name):
            for port in app.ports():
                key = (backend, server_name(node.name, port))
                assert states.get(key) == "UP", f"{master.name}: {key}: {states.get(key)}"


def test_the_memory_caps_of_every_instance_on_a_worker_fit_in_three_quarters_of_it(on, worker_node):
    """The built-in service's instances and every app's share one budget: caps computed for
    each app alone would let each of them take most of the host."""
    host = on(worker_node)
    caps = host.check_output(
        "systemctl show -p MemoryMax --value 'wssfleet@*.service' 'wssfleet-app-*@*.service'"
    ).split()
    total_kib = int(host.check_output("awk '/^MemTotal:/ {print $2}' /proc/meminfo"))
    assert len(caps) > 1, caps
    assert sum(int(cap) for cap in caps) <= total_kib * 1024 * 3 // 4, (caps, total_kib)
