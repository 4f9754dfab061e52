"""Settings and inventories are checked before any host is touched, with errors that name
the setting and the fix; rendered configs pass HAProxy's and nftables' own checks."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from roles.certificates import cron_schedule
from roles.haproxy import Backend
from tests.processes import free_port, wait_for_port
from tests.unit.helpers import (
    PEBBLE,
    control_cli,
    granted,
    haproxy_answer,
    render,
    rendered_haproxy,
)
from wssfleet_control.checkout import REPO
from wssfleet_control.inventory import from_groups
from wssfleet_control.settings import Settings, SettingsError, resolve


def test_defaults_fill_in_everything_but_the_domain():
    settings = resolve(PEBBLE)
    assert settings.worker_processes == "auto"
    assert settings.haproxy_timeout_tunnel == "1h"
    assert settings.origins == ("https://wss.example.test",)
    assert settings.acme_directory == "https://127.0.0.1:14000/dir"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "setting domain is required"),
        ({**PEBBLE, "domain": "Not A Name"}, "setting domain='Not A Name' is invalid: give a"),
        ({**PEBBLE, "haproxy_timeout_tunel": "2h"}, "did you mean 'haproxy_timeout_tunnel'"),
        (
            {**PEBBLE, "send_queue_messages": 256},
            "is gone: a slow client's backlog is now bounded in bytes; set send_buffer_bytes",
        ),
        ({**PEBBLE, "haproxy_timeout_tunnel": "2 hours"}, "give a duration like"),
        ({**PEBBLE, "worker_processes": 0}, "give 'auto' or a whole number from 1 to 64"),
        ({**PEBBLE, "acme_server": "letsencrypt"}, "setting acme_email is required"),
        ({**PEBBLE, "acme_server": "http://insecure/dir"}, "setting acme_server="),
        ({**PEBBLE, "acme_ca_bundle": "/nonexistent.pem"}, "give the path of a PEM file"),
        ({**PEBBLE, "allowed_origins": ["example.com"]}, "each origin is scheme://host"),
        ({**PEBBLE, "extra_domains": ["wss.example.test"]}, "repeat a name"),
        ({**PEBBLE, "acme_profile": "weekly"}, "'classic', 'tlsserver' or 'shortlived'"),
        ({**PEBBLE, "renewal_interval": "7m"}, "minutes that divide an hour"),
        ({**PEBBLE, "renewal_interval": "5h"}, "hours that divide a day"),
        ({**PEBBLE, "renewal_interval": "90s"}, "cannot be a cron schedule"),
        ({**PEBBLE, "renewal_interval": "1m"}, "renewal_random_delay='1h' must be shorter"),
    ],
)
def test_bad_settings_name_the_setting_and_the_fix(values, message):
    with pytest.raises(SettingsError) as error:
        resolve(values)
    assert message in str(error.value)


def groups(master=("m", "127.0.0.10"), workers=(("w1", "127.0.0.11"),), **settings):
    common = {"wssfleet": {**PEBBLE, **settings}, "wssfleet_inventory": __file__}

    def entry(name, address):
        return {"name": name, "data": {"ssh_hostname": address, **common}}

    return {
        "master": [entry(*master)] if master else [],
        "workers": [entry(*worker) for worker in workers],
        "redis": [],
    }


def test_a_valid_inventory_puts_redis_on_the_master():
    fleet = from_groups(groups())
    assert fleet.redis.name == "m"
    assert fleet.roles_of("m") == ["master", "redis", "monitoring"]
    assert fleet.redis_url("p/w") == "redis://wssfleet:p%2Fw@127.0.0.10:6379/0"


def highly_available(**settings):
    """Two masters that also hold Redis (a primary and a replica), two workers."""
    described = groups(workers=(("w1", "127.0.0.11"), ("w2", "127.0.0.12")), **settings)
    second = {**described["master"][0], "name": "m2"}
    second["data"] = {**second["data"], "ssh_hostname": "127.0.0.20"}
    described["master"].append(second)
    described["redis"] = list(described["master"])
    return described


def test_two_masters_share_a_front_door_and_three_hosts_run_sentinels():
    fleet = from_groups(highly_available(front_door_address="10.0.0.100/24"))
    assert [node.name for node in fleet.masters] == ["m", "m2"]
    assert fleet.master.name == "m"
    assert fleet.front_door == "10.0.0.100"
    assert [node.name for node in fleet.sentinels] == ["m", "m2", "w1"]
    assert fleet.roles_of("m2") == ["master", "redis", "monitoring", "sentinel"]
    assert fleet.roles_of("w1") == ["workers", "sentinel"]
    assert fleet.roles_of("w2") == ["workers"]


def test_two_masters_without_a_front_door_are_the_dns_mode():
    fleet = from_groups(highly_available())
    assert fleet.front_door == ""
    assert len(fleet.masters) == 2


@pytest.mark.parametrize(
    ("described", "message"),
    [
        (groups(front_door_address="10.0.0.100/24"), "needs two or more hosts in group 'master'"),
        (highly_available(front_door_address="8.8.8.8/24"), "give a private IPv4 address"),
        (highly_available(front_door_address="10.0.0.100"), "give a private IPv4 address"),
        (highly_available(front_door_address="127.0.0.20/8"), "is a host's own address"),
        (groups(workers=()), "the inventory has no workers"),
        (groups(master=None), "the inventory has no master"),
        (groups(workers=(("w1", "127.0.0.10"),)), "share the address 127.0.0.10"),
        (
            groups(workers=(("m", "127.0.0.10"),), worker_base_port=8870, worker_processes=20),
            "include 8888 (certbot",
        ),
        (groups(worker_base_port=20, worker_processes=4), "give a whole number from 1024"),
        (groups(redis_port=8888), "clashes with certbot's HTTP-01 listener"),
    ],
)
def test_bad_inventories_are_refused(described, message):
    with pytest.raises(SettingsError) as error:
        from_groups(described)
    assert message in str(error.value)


def test_make_deploy_stops_on_a_bad_setting_before_connecting(tmp_path):
    inventory = tmp_path / "bad.py"
    inventory.write_text(
        "master = [('m', {'ssh_hostname': '127.0.0.10'})]\n"
        "workers = [('w', {'ssh_hostname': '127.0.0.11'})]\n"
        "all = (['m', 'w'], {'wssfleet_inventory': __file__, "
        "'wssfleet': {'domain': 'ws.example.com', 'acme_server': 'letsencrypt'}})\n"
    )
    result = subprocess.run(
        ["make", "--no-print-directory", "deploy", f"INVENTORY={inventory}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "setting acme_email is required" in result.stderr
    assert "Connecting to hosts" not in result.stdout + result.stderr


MASTERS = {
    "one master": [SimpleNamespace(name="m", address="127.0.0.10")],
    "two masters": [
        SimpleNamespace(name="m", address="127.0.0.10"),
        SimpleNamespace(name="m2", address="127.0.0.20"),
    ],
}


@pytest.mark.parametrize("masters", MASTERS.values(), ids=MASTERS.keys())
@pytest.mark.parametrize("internal_tls", [False, True])
def test_rendered_haproxy_config_passes_haproxy_check(tmp_path, internal_tls, masters):
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is missing: run 'make tools'")
    certificate = tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test",
            "-keyout",
            str(tmp_path / "key"),
            "-out",
            str(tmp_path / "cert"),
        ],
        check=True,
        capture_output=True,
    )
    certificate.write_text((tmp_path / "cert").read_text() + (tmp_path / "key").read_text())
    backends = [Backend("w1-8001", "127.0.0.11", 8001), Backend("w1-8002", "127.0.0.11", 8002)]
    internal_ca = ""
    if internal_tls:
        internal_ca = str(tmp_path / "internal-ca.pem")
        Path(internal_ca).write_text((tmp_path / "cert").read_text())
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        render(
            "haproxy",
            "haproxy.cfg.j2",
            settings=resolve(PEBBLE),
            servers=backends,
            certificate=certificate,
            internal_ca=internal_ca,
            metrics_address="127.0.0.1",
            metrics_port=8405,
            peers=masters,
            peers_section="wssfleet_masters",
            local_peer="m",
        )
    )
    result = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # Several masters share the admission counters, and any one passes ACME challenges on.
    shared = "peer m2 127.0.0.20:10000" in config.read_text()
    assert shared is (len(masters) > 1)
    assert ("server m2 127.0.0.20:8888" in config.read_text()) is shared
    tls_options = f"ssl verify required ca-file {internal_ca}"
    assert (tls_options in config.read_text()) is internal_tls
    assert "server w1-8002 127.0.0.11:8002" in config.read_text()
    assert "timeout tunnel 1h" in config.read_text()
    assert "bind 127.0.0.1:8405" in config.read_text()


@pytest.mark.parametrize("masters", MASTERS.values(), ids=MASTERS.keys())
def test_rendered_firewall_passes_nft_check_and_touches_no_other_table(tmp_path, masters):
    several = len(masters) > 1
    ruleset = tmp_path / "wssfleet.nft"
    ruleset.write_text(
        render(
            "firewall",
            "wssfleet.nft.j2",
            settings=resolve(PEBBLE),
            ssh_port=2222,
            is_master=True,
            is_redis=True,
            is_sentinel=several,
            front_door="127.0.0.100" if several else "",
            vrrp_interface="lo" if several else "",
            other_masters=[master.address for master in masters[1:]],
            redis_clients=["127.0.0.11", "127.0.0.12"],
            sentinel_clients=["127.0.0.11", "127.0.0.20"],
            master_addresses=[master.address for master in masters],
            service_ports=[8001, 8002],
            monitoring_addresses=["127.0.0.13"],
            metrics_ports=[9100, 8405, 9121, 9001, 9002],
        )
    )
    result = subprocess.run(["nft", "-c", "-f", str(ruleset)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = ruleset.read_text()
    assert "tcp dport 2222 accept" in text and "dport 22 " not in text
    assert "ip saddr { 127.0.0.13 } tcp dport { 9100, 8405, 9121, 9001, 9002 } accept" in text
    # The other master's VRRP and peers only, and the Sentinel's port to its clients only.
    vrrp = 'iifname "lo" ip saddr { 127.0.0.20 } ip protocol vrrp ip ttl 255 accept'
    assert (vrrp in text) is several
    assert ("ip saddr { 127.0.0.11, 127.0.0.20 } tcp dport 26379 accept" in text) is several
    # With a front door, a packet of a connection through its previous holder reaches the
    # kernel, which resets it (dropped, the client waits for its own timeout).
    lines = [line.strip() for line in text.splitlines()]
    answered = "ct state invalid tcp dport { 80, 443 } accept"
    assert (answered in lines) is several
    if several:
        assert lines.index(answered) < lines.index("ct state invalid drop")
    statements = [line.split()[0] for line in text.splitlines() if line and line[0].isalpha()]
    # Only wssfleet's own table is declared, deleted and defined: no flush of the ruleset.
    assert "flush" not in statements
    assert {line for line in text.splitlines() if line.startswith(("table", "delete"))} == {
        "table inet wssfleet",
        "delete table inet wssfleet",
        "table inet wssfleet {",
    }


def test_settings_table_documents_every_setting():
    result = subprocess.run(
        [sys.executable, "-m", "wssfleet_control", "settings"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "| `haproxy_timeout_tunnel` | `'1h'` |" in result.stdout
    assert "| `domain` | (required) |" in result.stdout


@pytest.mark.parametrize(
    ("example", "hosts"),
    [
        ("production.example.py", "lb1 (master+redis+monitoring), ws1 (workers), ws2 (workers)"),
        (
            "production-ha.example.py",
            "lb2 (master+redis+monitoring+sentinel), ws1 (workers+sentinel)",
        ),
    ],
)
def test_the_production_example_inventories_are_valid(example, hosts):
    result = subprocess.run(
        [sys.executable, "-m", "wssfleet_control", "check", f"inventory/{example}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert hosts in result.stdout


wssfleet = control_cli


def test_token_command_signs_with_the_deployments_secret(tmp_path):
    from wssfleet import auth
    from wssfleet_control import secrets

    inventory = tmp_path / "staging.py"
    inventory.write_text(
        "master = [('m', {'ssh_hostname': '127.0.0.10'})]\n"
        "workers = [('w', {'ssh_hostname': '127.0.0.11'})]\n"
        "all = (['m', 'w'], {'wssfleet_inventory': __file__, 'wssfleet': {\n"
        "    'domain': 'ws.example.com', 'acme_email': 'ops@example.com'}})\n"
    )
    refused = wssfleet("token", "-i", str(inventory), "--sub", "ops")
    assert refused.returncode == 2
    assert "has no signing key yet: deploy it first" in refused.stderr
    assert not secrets.path_for(inventory).exists(), "a refused token command wrote secrets"
    stored = secrets.load(inventory)
    assert secrets.path_for(inventory).stat().st_mode & 0o777 == 0o600
    result = wssfleet("token", "-i", str(inventory), "--sub", "ops", "--ttl", "60")
    assert result.returncode == 0, result.stderr
    assert granted(auth.verify(stored["jwt_secret"], result.stdout.strip())) == ("ops", None, None)
    limited = wssfleet(
        "token",
        "-i",
        str(inventory),
        "--sub",
        "ops",
        "--subscribe",
        "user.ops.*",
        "--subscribe",
        "lobby",
        "--publish",
        "lobby",
    )
    assert limited.returncode == 0, limited.stderr
    grant = auth.verify(stored["jwt_secret"], limited.stdout.strip())
    assert granted(grant) == ("ops", ("user.ops.*", "lobby"), ("lobby",))
    bad = wssfleet("token", "-i", str(inventory), "--sub", "ops", "--publish", "a b")
    assert bad.returncode == 2
    assert "'a b': a channel pattern is 1-64 characters" in bad.stderr
    # With the key in a vault (secrets_command), tokens are signed with the vault's key.
    vault = tmp_path / "vault.json"
    vault.write_text(json.dumps({"jwt_secret": "the-vaults-signing-key-0123456789abcdef"}))
    inventory.write_text(
        inventory.read_text().replace(
            "'ws.example.com'", f"'ws.example.com', 'secrets_command': 'cat {vault}'"
        )
    )
    vaulted = wssfleet("token", "-i", str(inventory), "--sub", "ops")
    assert vaulted.returncode == 0, vaulted.stderr
    assert auth.verify("the-vaults-signing-key-0123456789abcdef", vaulted.stdout.strip())


def test_a_bad_memory_size_names_the_setting():
    with pytest.raises(SettingsError) as error:
        resolve({**PEBBLE, "redis_maxmemory": "lots"})
    assert "setting redis_maxmemory='lots' is invalid: give a size like 256mb" in str(error.value)


def test_a_history_that_cannot_fit_in_redis_is_refused_with_the_fix():
    # Sized from the bounds the service enforces: channels x each channel's byte budget.
    with pytest.raises(SettingsError) as refused:
        resolve({**PEBBLE, "history_max_bytes": 1048576})
    message = str(refused.value)
    assert "redis_maxmemory='256mb' cannot hold the history" in message
    assert "history_channels=200 x history_max_bytes=1048576" in message
    assert "raise redis_maxmemory to at least" in message
    fitting = {"history_max_bytes": 1048576, "redis_maxmemory": "2gb"}
    assert resolve({**PEBBLE, **fitting}).history_max_bytes == 1048576


def test_a_publish_larger_than_a_history_is_refused_with_the_fix():
    with pytest.raises(SettingsError) as refused:
        resolve({**PEBBLE, "history_max_bytes": 4096, "max_publish_bytes": 8192})
    assert "max_publish_bytes=8192 exceeds history_max_bytes=4096" in str(refused.value)


def test_the_old_history_message_bytes_setting_names_its_replacement():
    with pytest.raises(SettingsError) as refused:
        resolve({**PEBBLE, "history_message_bytes": 512})
    assert "set history_max_bytes instead" in str(refused.value)


@pytest.mark.parametrize(
    ("interval", "schedule"),
    [
        ("1m", "* * * * *"),
        ("15m", "*/15 * * * *"),
        ("6h", "{m} */6 * * *"),
        ("1d", "{m} */24 * * *"),
    ],
)
def test_renewal_interval_becomes_the_cron_schedule(interval, schedule):
    settings = resolve({**PEBBLE, "renewal_interval": interval, "renewal_random_delay": "10s"})
    minute = zlib.crc32(settings.domain.encode()) % 60
    assert cron_schedule(settings) == schedule.format(m=minute)


REFUSAL = """
import sys
from pyinfra_cli.exceptions import UnexpectedExternalError
from wssfleet_control.deployment import DeployError
from wssfleet_control.engine import refusal
from wssfleet_control.settings import SettingsError

raised = {kind}({message!r})
# As pyinfra hands over what deploy.py raised.
wrapped = UnexpectedExternalError(raised, "deploy.py")
error = refusal(wrapped)
print(type(error).__name__, "|", error if error is not wrapped else "unchanged")
"""


@pytest.mark.parametrize(
    ("kind", "message", "seen"),
    [
        (
            "SettingsError",
            "setting haproxy_maxconn=2000000 needs 4000100 open files: lower it",
            "DeployError | setting haproxy_maxconn=2000000 needs 4000100 open files: lower it",
        ),
        (
            "DeployError",
            "host w1 runs Ubuntu 24: wssfleet supports Debian 13 or Debian 12",
            "DeployError | host w1 runs Ubuntu 24: wssfleet supports Debian 13 or Debian 12",
        ),
        ("KeyError", "bug", "UnexpectedExternalError | unchanged"),
    ],
)
def test_a_roles_refusal_reaches_the_operator_as_its_own_words(kind, message, seen):
    # In a process of its own: pyinfra's CLI patches the standard library for gevent.
    result = subprocess.run(
        [sys.executable, "-c", REFUSAL.format(kind=kind, message=message)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == seen


def admission_rules(frontend: list[str]) -> list[str]:
    """The frontend's admission lines, as rendered: its stick table, ACLs and rules."""
    starts = ("stick-table", "tcp-request connection", "acl")
    return [line for line in frontend if line.strip().startswith(starts)]


def admission_haproxy(tmp_path, admission: list[str], ipv6: bool) -> tuple:
    """A config that runs ``admission`` and answers 200 to whatever it admits, on 127.0.0.1
    (and ::1): its port, admin socket and path."""
    port = free_port()
    admin = tmp_path / "admin.sock"
    config = tmp_path / "admission.cfg"
    binds = f"    bind 127.0.0.1:{port}\n" + (f"    bind [::1]:{port} v6only\n" if ipv6 else "")
    config.write_text(
        f"global\n    stats socket {admin} mode 600 level admin\n"
        "defaults\n    mode http\n    timeout client 5s\n    timeout connect 5s\n"
        f"    timeout server 5s\nfrontend https\n{binds}"
        + "\n".join(admission)
        + "\n    http-request return status 200\n"
    )
    return port, admin, config


def test_haproxy_counts_an_ipv6_source_by_its_64_and_ipv4_by_its_address(tmp_path):
    """The rendered admission rules, run by a real HAProxy: the keys of its stick table are
    what the per-source limits count. One /64 is one source (before, each of its 2^64
    addresses had limits of its own)."""
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is missing: run 'make tools'")
    rendered = rendered_haproxy([Backend("w1-8001", "127.0.0.11", 8001)], tmp_path / "cert.pem")
    frontend = rendered.split("frontend https\n", 1)[1].split("\n\n", 1)[0].splitlines()
    admission = admission_rules(frontend)
    assert any("ipmask(32,64)" in line for line in admission), admission
    port, admin, config = admission_haproxy(tmp_path, admission, ipv6=True)
    haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stderr=subprocess.PIPE)
    try:
        wait_for_port(port)
        for host in ("127.0.0.1", "::1"):
            with socket.create_connection((host, port), timeout=5) as link:
                link.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert link.recv(100).startswith(b"HTTP/1.1 200")
        table = haproxy_answer(admin, "show table https")
    finally:
        haproxy.terminate()
        haproxy.wait(timeout=10)
    keys = {line.split("key=")[1].split()[0] for line in table.splitlines() if "key=" in line}
    assert keys == {"::ffff:127.0.0.1", "::"}, table


def test_an_exempt_source_passes_the_admission_limits_a_real_haproxy_keeps_for_others(tmp_path):
    """admission_exempt_sources (a monitor, a scanner, a NAT the operator vouches for): a
    real HAProxy running the rendered admission rules refuses a source past its rate, and
    lets the exempt one through every time, untracked."""
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is missing: run 'make tools'")
    settings = resolve(
        {**PEBBLE, "haproxy_connection_rate_limit": 10, "admission_exempt_sources": ["127.0.0.2"]}
    )
    assert settings.admission_exempt_sources == ("127.0.0.2/32",)
    rendered = rendered_haproxy([], tmp_path / "cert.pem", settings=settings)
    frontend = rendered.split("frontend https\n", 1)[1].split("\n\n", 1)[0].splitlines()
    port, admin, config = admission_haproxy(tmp_path, admission_rules(frontend), ipv6=False)

    def answered(source: str) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), 5, (source, 0)) as link:
                link.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                return link.recv(100).startswith(b"HTTP/1.1 200")
        except ConnectionResetError:  # refused: HAProxy closes it before a byte
            return False

    haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stderr=subprocess.PIPE)
    try:
        wait_for_port(port)
        limited = [answered("127.0.0.1") for _ in range(5)]
        exempt = [answered("127.0.0.2") for _ in range(5)]
        table = haproxy_answer(admin, "show table https")
    finally:
        haproxy.terminate()
        haproxy.wait(timeout=10)
    # One a second (wait_for_port's probe may have taken this second's): the rest refused.
    assert sum(limited) <= 1, limited
    assert all(exempt), exempt
    keys = {line.split("key=")[1].split()[0] for line in table.splitlines() if "key=" in line}
    assert keys == {"::ffff:127.0.0.1"}, table


def test_the_front_door_is_announced_over_vrrp3_at_the_advert_interval():
    config = render(
        "front_door",
        "keepalived.conf.j2",
        host_name="m1",
        address="10.0.0.100",
        address_with_prefix="10.0.0.100/24",
        interface="eth0",
        router_id=51,
        priority=150,
        own_address="10.0.0.10",
        peers=["10.0.0.11"],
        advert_interval="0.2",
        runtime="/r.py",
        notify="/n",
    )
    assert "    version 3\n    advert_int 0.2\n" in config
    # Version 3 has no authentication: no password to leave in the file.
    assert "auth_" not in config
    with pytest.raises(ValueError, match="give 50ms to 10s in steps of 10ms"):
        Settings(**PEBBLE, front_door_advert_interval="15ms")


def test_the_sentinels_wait_at_least_their_ping_period_before_a_failover():
    assert Settings(**PEBBLE).redis_failover_after == "1500ms"
    assert Settings(**PEBBLE, redis_failover_after="5s").redis_failover_after == "5s"
    for value in ("500ms", "0s", "2m"):
        with pytest.raises(ValueError, match=r"redis_failover_after\n.*give 1s to 60s"):
            Settings(**PEBBLE, redis_failover_after=value)
