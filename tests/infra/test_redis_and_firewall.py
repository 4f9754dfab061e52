"""Redis behind a password on a private address, keeping history on disk; nftables loaded
everywhere."""

from __future__ import annotations

import shlex

from roles.redis import ADMIN_REDIS_USER, REDIS_STOP_TIMEOUT_SECONDS
from wssfleet.redis_functions import LIBRARY_VERSION
from wssfleet_control import commands
from wssfleet_control.hostside import layout
from wssfleet_control.hostside.layout import CURRENT, REDIS_GUARD_UNIT, SERVICE_ENVIRONMENT


def tls_options(fleet) -> str:
    """redis-cli's options to reach this fleet's Redis (TLS only with internal_tls)."""
    if fleet.settings.internal_tls:
        return f"--tls --cacert {layout.REDIS_TLS_DIRECTORY}/ca.pem"
    return ""


def test_redis_is_active_and_enabled(on, redis_node):
    service = on(redis_node).service("redis-server")
    assert service.is_running and service.is_enabled


def test_redis_requires_the_password(on, redis_node, fleet):
    reply = on(redis_node).check_output(
        f"redis-cli {tls_options(fleet)} -h {redis_node.address} -p {fleet.settings.redis_port} "
        "ping 2>&1"
    )
    assert "NOAUTH" in reply


def test_redis_is_bound_privately(on, redis_node, fleet):
    host = on(redis_node)
    assert host.socket(f"tcp://{redis_node.address}:{fleet.settings.redis_port}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{fleet.settings.redis_port}").is_listening


def test_redis_keeps_the_history_in_an_append_only_file(on, redis_node, fleet):
    password = fleet.secrets(create=False)["redis_admin_password"]
    info = on(redis_node).check_output(
        f"REDISCLI_AUTH={shlex.quote(password)} redis-cli {tls_options(fleet)} "
        f"--user {ADMIN_REDIS_USER} "
        f"-h {redis_node.address} -p {fleet.settings.redis_port} info persistence"
    )
    assert "aof_enabled:1" in info, info
    assert "aof_last_write_status:ok" in info, info


def test_a_stop_of_redis_ends_even_mid_way_through_its_first_aof(on, redis_node, fleet):
    password = fleet.secrets(create=False)["redis_admin_password"]
    host = on(redis_node)
    answer = host.check_output(
        f"REDISCLI_AUTH={shlex.quote(password)} redis-cli {tls_options(fleet)} "
        f"--user {ADMIN_REDIS_USER} "
        f"-h {redis_node.address} -p {fleet.settings.redis_port} config get shutdown-on-sigterm"
    )
    assert answer.split() == ["shutdown-on-sigterm", "force"], answer
    stop_timeout = host.check_output("systemctl show -P TimeoutStopUSec redis-server")
    assert stop_timeout == f"{REDIS_STOP_TIMEOUT_SECONDS}s", stop_timeout


def test_a_silent_replication_link_is_made_again_within_seconds(on, redis_node, fleet):
    if len(fleet.redis_nodes) < 2:
        return
    password = fleet.secrets(create=False)["redis_admin_password"]
    answer = on(redis_node).check_output(
        f"REDISCLI_AUTH={shlex.quote(password)} redis-cli {tls_options(fleet)} "
        f"--user {ADMIN_REDIS_USER} -h {redis_node.address} -p {fleet.settings.redis_port} "
        "config get repl-*"
    )
    values = dict(zip(answer.split()[::2], answer.split()[1::2], strict=True))
    assert values["repl-timeout"] == "5", values
    assert values["repl-ping-replica-period"] == "1", values


REDIS_PROBE = """
import os, redis
r = redis.Redis.from_url(os.environ["WSSFLEET_REDIS_URL"])
print(r.ping())
forbidden = (
    ["FLUSHDB"], ["KEYS", "*"], ["CLIENT", "LIST"], ["SHUTDOWN"], ["DEL", "wssfleet:x"],
    ["EVAL", "return 1", "0"], ["SCRIPT", "LOAD", "return 1"], ["FUNCTION", "FLUSH"],
)
for command in forbidden:
    try:
        r.execute_command(*command)
        print("ALLOWED", command)
    except redis.exceptions.NoPermissionError:
        print("refused", command[0])
"""


def test_the_workers_redis_user_may_not_flush_list_or_kill(on, worker_node):
    # From the worker itself, with the credentials its instances use.
    output = on(worker_node).check_output(
        f"set -a; . {SERVICE_ENVIRONMENT}; {CURRENT}/venv/bin/python -c {shlex.quote(REDIS_PROBE)}"
    )
    assert output.splitlines()[0] == "True", output
    assert "ALLOWED" not in output, output
    assert output.count("refused") == 8, output


def test_redis_runs_this_releases_message_plane_functions(on, redis_node, fleet):
    password = fleet.secrets(create=False)["redis_admin_password"]
    version = on(redis_node).check_output(
        f"REDISCLI_AUTH={shlex.quote(password)} redis-cli {tls_options(fleet)} "
        f"--user {ADMIN_REDIS_USER} "
        f"-h {redis_node.address} -p {fleet.settings.redis_port} FCALL_RO wssfleet_version 0"
    )
    assert version == LIBRARY_VERSION


def test_firewall_rules_are_loaded_with_a_default_drop(on, any_node):
    host = on(any_node)
    ruleset = host.check_output("nft list table inet wssfleet")
    assert "hook input priority filter; policy drop;" in ruleset
    assert host.service("wssfleet-firewall").is_enabled


def test_one_redis_is_the_primary_and_every_other_one_follows_it(on, fleet):
    if len(fleet.redis_nodes) < 2:
        return
    roles = {}
    for node in fleet.redis_nodes:
        info = on(node).check_output(
            commands.redis_replication(fleet.settings.redis_port, fleet.settings.internal_tls)
        )
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        roles[node.name] = fields
    primaries = [name for name, fields in roles.items() if fields["role"] == "master"]
    assert len(primaries) == 1, f"Redis primaries: {primaries}"
    [primary] = primaries
    for name, fields in roles.items():
        if name != primary:
            assert fields["role"] == "slave", (name, fields)
            assert fields["master_host"] == fleet.node(primary).address, (name, fields)
            assert fields["master_link_status"] == "up", (name, fields)
            # In step, so the promotion guard lets the Sentinels promote it.
            assert fields["slave_priority"] == "100", (name, fields)
    assert int(roles[primary]["connected_slaves"]) == len(fleet.redis_nodes) - 1


def test_the_promotion_guard_watches_each_redis_of_several(on, redis_node, fleet):
    guard = on(redis_node).service(REDIS_GUARD_UNIT)
    if len(fleet.redis_nodes) < 2:
        assert not guard.is_running
        return
    assert guard.is_running and guard.is_enabled


def test_the_sentinels_agree_on_the_primary_and_have_a_quorum(on, fleet, sentinel_node):
    port, tls = fleet.settings.redis_sentinel_port, fleet.settings.internal_tls
    quorum = on(sentinel_node).check_output(commands.sentinel_quorum(port, tls))
    assert quorum.startswith(f"OK {len(fleet.sentinels)} usable Sentinels"), quorum
    primary = on(sentinel_node).check_output(commands.sentinel_primary(port, tls)).split()
    info = on(fleet.node_at(primary[0])).check_output(
        commands.redis_replication(fleet.settings.redis_port, tls)
    )
    assert "role:master" in info, (sentinel_node.name, primary)


def test_the_sentinels_ask_for_a_password(on, fleet, sentinel_node):
    reply = on(sentinel_node).check_output(
        f"redis-cli --no-auth-warning {tls_options(fleet)} -h {sentinel_node.address} "
        f"-p {fleet.settings.redis_sentinel_port} SENTINEL masters 2>&1 || true"
    )
    assert "NOAUTH" in reply, reply


def test_the_secrets_record_is_roots_and_agrees_with_this_machines_file(on, any_node, fleet):
    """What a deploy from another machine is checked against (secret_records.py): root's
    alone, and the fingerprints of the secrets this control machine holds."""
    import json

    from wssfleet_control import secret_records

    record = on(any_node).file(layout.SECRET_RECORD)
    assert record.user == "root" and record.mode == 0o600
    recorded = json.loads(on(any_node).check_output(f"cat {layout.SECRET_RECORD}"))
    assert recorded
    assert secret_records.conflicts(fleet.secrets(create=False), {"host": recorded}) == {}
