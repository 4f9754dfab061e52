"""Redis behind a password on a private address; nftables loaded everywhere."""

from __future__ import annotations


def test_redis_is_active_and_enabled(on, redis_node):
    service = on(redis_node).service("redis-server")
    assert service.is_running and service.is_enabled


def test_redis_requires_the_password(on, redis_node, fleet):
    reply = on(redis_node).check_output(
        f"redis-cli -h {redis_node.address} -p {fleet.settings.redis_port} ping 2>&1"
    )
    assert "NOAUTH" in reply


def test_redis_is_bound_privately(on, redis_node, fleet):
    host = on(redis_node)
    assert host.socket(f"tcp://{redis_node.address}:{fleet.settings.redis_port}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{fleet.settings.redis_port}").is_listening


def test_firewall_rules_are_loaded_with_a_default_drop(on, any_node):
    host = on(any_node)
    ruleset = host.check_output("nft list table inet wssfleet")
    assert "hook input priority filter; policy drop;" in ruleset
    assert host.service("nftables").is_enabled
