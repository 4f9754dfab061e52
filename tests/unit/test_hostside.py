"""The host-side helpers as they run on a master and a worker, against a real HAProxy (master-
worker mode, its runtime API on Unix sockets) and real service processes on loopback. Only the
host contract's paths differ: they point into the test's directory. What needs systemd (an
instance's unit, `systemctl reload haproxy`) is left to the lab's tests."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from websockets.exceptions import ConnectionClosed

import wssfleet_control.hostside  # noqa: F401  (the helpers import each other as on a host)
from tests.processes import free_port, wait_for_port
from tests.unit.clients import open_client, run
from tests.unit.helpers import wait_until
from tests.unit.test_internal_tls import material
from wssfleet_control.hostside import layout

haproxy_runtime = importlib.import_module("haproxy_runtime")
instances = importlib.import_module("instances")
rebalancer = importlib.import_module("rebalancer")

INTERNAL_KEY = "the-rebalancer-s-internal-key"
# The deployed backend's health checks, quickened for a test.
DEFAULT_SERVER = "check inter 200ms fastinter 100ms downinter 200ms fall 1 rise 1"


def haproxy_config(
    directory: Path, port: int, servers: dict[str, int], app_servers: dict[str, int] | None = None
) -> str:
    """The master's config as far as the helpers see it: the workers' backend, and an app's
    (app_chat, on /chat) with ``app_servers``."""
    lines = "".join(
        f"    server {name} 127.0.0.1:{service_port}\n" for name, service_port in servers.items()
    )
    app_lines = "".join(
        f"    server {name} 127.0.0.1:{app_port}\n"
        for name, app_port in (app_servers or {}).items()
    )
    return f"""global
    stats socket {directory}/admin.sock mode 600 level admin expose-fd listeners
    stats socket {directory}/stats.sock mode 600 level user
    stats timeout 30s

defaults
    mode http
    timeout connect 2s
    # Without it a check must be answered within inter (200 ms): one slow answer from a
    # service on a loaded test machine marked it DOWN (fall 1) and failed a test once.
    timeout check 2s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h

frontend clients
    bind 127.0.0.1:{port}
    use_backend app_chat if {{ path_beg /chat }}
    default_backend {layout.BACKEND}

backend app_chat
    balance leastconn
    default-server {DEFAULT_SERVER} maxconn 100
{app_lines}
backend {layout.BACKEND}
    balance leastconn
    option httpchk
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host wssfleet
    default-server {DEFAULT_SERVER}
{lines}"""


def admin_answers() -> bool:
    try:
        return "Pid:" in haproxy_runtime.ask("show info")
    except OSError:
        return False


@pytest.fixture
def master(tmp_path, start_service, monkeypatch):
    """Two service instances behind a real HAProxy whose runtime API the helpers reach."""
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed: run 'make tools'")
    services = [start_service(WSSFLEET_INTERNAL_KEY=INTERNAL_KEY) for _ in range(2)]
    names = {f"w1-{service.port}": service.port for service in services}
    port = free_port()
    live = tmp_path / "haproxy.cfg"
    live.write_text(haproxy_config(tmp_path, port, names))
    process = subprocess.Popen(
        ["haproxy", "-W", "-db", "-S", str(tmp_path / "master.sock"), "-f", str(live)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    monkeypatch.setattr(haproxy_runtime, "ADMIN_SOCKET", str(tmp_path / "admin.sock"))
    monkeypatch.setattr(rebalancer, "STATS_SOCKET", str(tmp_path / "stats.sock"))
    monkeypatch.setattr(haproxy_runtime, "MASTER_SOCKET", str(tmp_path / "master.sock"))
    monkeypatch.setenv("WSSFLEET_INTERNAL_KEY", INTERNAL_KEY)
    monkeypatch.delenv("WSSFLEET_INTERNAL_CA", raising=False)
    try:
        wait_for_port(port)
        # The port can listen a moment before the worker answers on its admin socket (its
        # file can exist, refusing connections, a moment longer: CI saw that once).
        wait_until(admin_answers, 10, "HAProxy's admin socket")
        for name in names:
            assert haproxy_runtime.wait_up(f"{layout.BACKEND}/{name}", 10) == 0
        yield SimpleNamespace(
            url=f"ws://127.0.0.1:{port}", live=live, services=services, names=list(names)
        )
    finally:
        process.terminate()
        process.wait(timeout=10)


async def close_code(ws) -> int | None:
    """How a client was closed (None: it is open)."""
    try:
        await asyncio.wait_for(ws.recv(), 0.05)
    except TimeoutError:
        return None
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else 1006
    return None


def addresses(master) -> dict[str, str]:
    """The rebalancer's --instance arguments: each server's address."""
    return {f"w1-{service.port}": f"127.0.0.1:{service.port}" for service in master.services}


def states(master) -> dict[str, str]:
    return {
        row["server"]: row["status"]
        for row in haproxy_runtime.servers()
        if row["backend"] == layout.BACKEND
    }


def test_servers_lists_every_instance_of_the_backend_with_its_state(master):
    assert states(master) == dict.fromkeys(master.names, "UP")
    # The read-only socket the rebalancer uses answers the same.
    read_only = haproxy_runtime.servers(rebalancer.STATS_SOCKET)
    assert {row["server"] for row in read_only} >= set(master.names)


def test_server_state_drains_and_readies_one_instance(master):
    first, second = master.names
    assert haproxy_runtime.server_state(f"{layout.BACKEND}/{first}", "drain") == 0
    assert states(master) == {first: "DRAIN", second: "UP"}
    assert haproxy_runtime.server_state(f"{layout.BACKEND}/{first}", "ready") == 0
    assert haproxy_runtime.wait_up(f"{layout.BACKEND}/{first}", 5) == 0
    assert haproxy_runtime.server_state(f"{layout.BACKEND}/{first}", "sleeping") == 2


def test_wait_up_fails_for_an_instance_that_is_gone(master):
    master.services[0].stop()
    deadline = time.monotonic() + 5
    while states(master)[master.names[0]] == "UP" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert states(master)[master.names[0]].startswith("DOWN")
    assert haproxy_runtime.wait_up(f"{layout.BACKEND}/{master.names[0]}", 1.5) == 1
    assert haproxy_runtime.wait_up(f"{layout.BACKEND}/absent-1", 0.3) == 1


def test_apply_adds_and_removes_workers_at_runtime_without_a_reload(
    master, start_service, tmp_path
):
    _, reloads, _ = haproxy_runtime.master_counters()
    kept = master.names[0]
    added = start_service(WSSFLEET_INTERNAL_KEY=INTERNAL_KEY)
    added_name = f"w2-{added.port}"
    servers = {kept: int(kept.rsplit("-", 1)[1]), added_name: added.port}
    candidate = tmp_path / "haproxy.cfg.candidate"
    port = int(master.url.rsplit(":", 1)[1])
    candidate.write_text(haproxy_config(tmp_path, port, servers))

    assert haproxy_runtime.apply(str(candidate), str(master.live), 1, 0) == 0
    assert haproxy_runtime.master_counters()[1] == reloads
    assert haproxy_runtime.wait_up(f"{layout.BACKEND}/{added_name}", 10) == 0
    assert states(master) == {kept: "UP", added_name: "UP"}
    assert master.live.read_text() == candidate.read_text()
    # A second apply of the same config changes nothing.
    assert haproxy_runtime.apply(str(candidate), str(master.live), 1, 0) == 0
    assert states(master) == {kept: "UP", added_name: "UP"}


def test_apply_adds_and_removes_an_apps_server_at_runtime_without_a_reload(master, tmp_path):
    """A worker added or removed also changes each app's backend (settings: apps): that too
    goes through the runtime API, with the app backend's own options (its maxconn)."""
    _, reloads, _ = haproxy_runtime.master_counters()
    port = int(master.url.rsplit(":", 1)[1])
    workers = dict(zip(master.names, (service.port for service in master.services), strict=True))
    app_server = f"w1-{master.services[0].port}"
    candidate = tmp_path / "haproxy.cfg.candidate"
    candidate.write_text(
        haproxy_config(tmp_path, port, workers, {app_server: master.services[0].port})
    )
    assert haproxy_runtime.apply(str(candidate), str(master.live), 1, 0) == 0
    assert haproxy_runtime.wait_up(f"app_chat/{app_server}", 10) == 0
    stat = haproxy_runtime.ask("show stat").splitlines()
    columns = stat[0].lstrip("# ").split(",")
    rows = [dict(zip(columns, line.split(","), strict=False)) for line in stat[1:] if line]
    (row,) = [r for r in rows if (r["pxname"], r["svname"]) == ("app_chat", app_server)]
    assert row["slim"] == "100", row  # the app backend's maxconn, from its default-server
    candidate.write_text(haproxy_config(tmp_path, port, workers))
    assert haproxy_runtime.apply(str(candidate), str(master.live), 1, 0) == 0
    assert app_server not in haproxy_runtime.ask("show servers state app_chat")
    assert haproxy_runtime.master_counters()[1] == reloads
    assert states(master) == dict.fromkeys(master.names, "UP")


def test_a_removed_worker_is_drained_its_clients_closed_1012_before_it_goes(master, tmp_path):
    kept = master.names[0]
    removed_service = master.services[1]

    async def scenario():
        clients = [await open_client(master) for _ in range(6)]
        port = int(master.url.rsplit(":", 1)[1])
        candidate = tmp_path / "haproxy.cfg.candidate"
        candidate.write_text(haproxy_config(tmp_path, port, {kept: master.services[0].port}))
        code = await asyncio.to_thread(
            haproxy_runtime.apply, str(candidate), str(master.live), 1, 0
        )
        return code, [await close_code(ws) for ws in clients]

    code, closes = run(scenario())
    assert code == 0
    on_removed = removed_service.health()["connections"]
    assert on_removed == 0
    # leastconn spread the six over both: the removed one's share was closed with 1012.
    assert closes.count(1012) >= 1 and set(closes) <= {1012, None}, closes
    assert states(master) == {kept: "UP"}


def test_the_rebalancer_moves_clients_from_the_fullest_instance(master, capsys):
    first, second = master.names

    async def scenario():
        haproxy_runtime.server_state(f"{layout.BACKEND}/{second}", "maint")
        clients = [await open_client(master) for _ in range(20)]
        haproxy_runtime.server_state(f"{layout.BACKEND}/{second}", "ready")
        await asyncio.to_thread(haproxy_runtime.wait_up, f"{layout.BACKEND}/{second}", 5)
        await asyncio.to_thread(rebalancer.once, addresses(master), 100, 1, 0.2)
        # The instance spreads its closes over the interval.
        await asyncio.sleep(1.5)
        codes = [await close_code(ws) for ws in clients]
        return codes.count(1012)

    closed = run(scenario())
    # What the rebalancer logged (wait_up prints the state it saw too).
    printed = capsys.readouterr().out.splitlines()
    shed = [json.loads(line) for line in printed if line.startswith("{")]
    assert [(event["server"], event["count"]) for event in shed] == [(first, 10)], shed
    assert closed == 10


def test_the_rebalancer_stays_still_while_an_instance_is_not_up(master, capsys):
    second = master.names[1]

    async def scenario():
        haproxy_runtime.server_state(f"{layout.BACKEND}/{second}", "maint")
        _clients = [await open_client(master) for _ in range(10)]
        await asyncio.to_thread(rebalancer.once, addresses(master), 100, 1, 0.2)
        return master.services[0].health()["connections"]

    assert run(scenario()) == 10
    assert capsys.readouterr().out == ""


@pytest.fixture
def releases(tmp_path, monkeypatch):
    home = tmp_path / "opt"
    for release in ("r1", "r2", "r3-partial"):
        (home / "releases" / release).mkdir(parents=True)
    for release in ("r1", "r2"):
        (home / "releases" / release / ".installed").touch()
    monkeypatch.setattr(instances, "app", dataclasses.replace(instances.app, home=str(home)))
    return home


def test_point_moves_current_and_previous_names_the_one_before(releases):
    assert instances.current() == "" and instances.previous() == ""
    assert instances.point("r1") == 0
    assert instances.point("r2") == 0
    assert instances.current() == "r2"
    assert (releases / "current").resolve() == releases / "releases" / "r2"
    assert instances.previous() == "r1"


def test_point_refuses_a_release_that_is_not_completely_installed(releases, capsys):
    assert instances.point("r3-partial") == 1
    assert instances.point("r9") == 1
    assert "is not installed" in capsys.readouterr().err
    assert instances.current() == ""


def test_installed_lists_the_complete_releases_rollback_to_may_pick(releases, capsys):
    assert instances.installed() == ["r1", "r2"]  # not r3-partial: its pip did not finish
    assert instances.main(["installed"]) == 0
    assert capsys.readouterr().out.split() == ["r1", "r2"]


def test_previous_skips_a_release_that_was_removed(releases):
    for release in ("r1", "r2"):
        instances.point(release)
    shutil.rmtree(releases / "releases" / "r1")
    assert instances.previous() == ""


def test_an_apps_instances_are_its_own_units_and_releases(monkeypatch, capsys):
    monkeypatch.setattr(instances, "installed", lambda: [instances.app.releases])
    monkeypatch.setattr(instances, "app", instances.SERVICE_LAYOUT)  # main sets it: restored
    assert instances.main(["--app", "chat", "installed"]) == 0
    assert capsys.readouterr().out.split() == ["/opt/wssfleet-apps/chat/releases"]
    assert instances.app.unit(8111) == "wssfleet-app-chat@8111.service"
    monkeypatch.setattr(instances, "app", instances.SERVICE_LAYOUT)
    assert instances.main(["installed"]) == 0
    assert capsys.readouterr().out.split() == ["/opt/wssfleet/releases"]


def test_a_tcp_health_check_passes_once_the_port_accepts(monkeypatch):
    listener = socket.create_server(("127.0.0.1", 0))
    port = str(listener.getsockname()[1])
    assert instances.health("127.0.0.1", port, "tcp") == (200, "accepts connections")
    listener.close()
    status, reason = instances.health("127.0.0.1", port, "tcp")
    assert status == 0 and "refused" in reason


def test_health_reads_an_instance_and_says_when_nothing_answers(start_service, monkeypatch):
    monkeypatch.setattr(instances, "WORKER_INTERNAL_CA", "/nonexistent/ca.pem")
    service = start_service()
    status, body = instances.health("127.0.0.1", str(service.port))
    assert status == 200 and json.loads(body)["connections"] == 0
    assert instances.health("127.0.0.1", str(free_port()))[0] == 0


def test_health_reads_a_plain_instance_while_the_internal_ca_is_on_the_host(
    start_service, monkeypatch, tmp_path
):
    """internal_tls turned off: the CA is still there while the rollout restarts each
    instance onto plain HTTP, and a plain instance does not answer a TLS hello."""
    monkeypatch.setattr(instances, "WORKER_INTERNAL_CA", str(material(tmp_path) / "ca.pem"))
    service = start_service()
    status, body = instances.health("127.0.0.1", str(service.port))
    assert status == 200 and json.loads(body)["connections"] == 0
    status, reason = instances.health("127.0.0.1", str(free_port()))
    assert status == 0 and "over TLS" in reason and "over HTTP" in reason
