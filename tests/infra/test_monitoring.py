"""Monitoring: every exporter on its host's private address, Prometheus scraping every target
with wssfleet's rules loaded, and nothing firing: `make verify` fails while an alert fires (a
failed renewal included: Let's Encrypt no longer e-mails about expiry)."""

from __future__ import annotations

import json
import re
import shlex
import time

from wssfleet_control.checkout import TEMPLATES
from wssfleet_control.hostside.layout import (
    NODE_EXPORTER_PORT,
    PROMETHEUS_PORT,
    PROMETHEUS_QUERY_HELPER,
)

SETTLE_SECONDS = 60
# Alerts that report an event of the last 10 minutes (the front door moved, the Sentinels
# failed over), not a broken state: a fleet that lived through one is healthy again.
EVENT_ALERTS = {"WssfleetFrontDoorMoved", "WssfleetRedisFailover"}
RULES_TEMPLATE = TEMPLATES / "monitoring" / "wssfleet-rules.yml.j2"


def shipped_rules(fleet) -> set[str]:
    """The alerts the deploy renders for this fleet: the template's, less those of features
    the fleet does not have (its ``{% if … %}`` blocks: replicas, a front door, masters)."""
    has = {
        "redis_nodes > 1": len(fleet.redis_nodes) > 1,
        "front_door": bool(fleet.front_door),
        "masters > 1": len(fleet.masters) > 1,
        # Inside an alert (its runbook_url), never around one.
        "settings.runbook_base_url": bool(fleet.settings.runbook_base_url),
        "settings.apps": bool(fleet.settings.apps),
        "settings.acme": fleet.settings.acme,
    }
    names, kept, conditions = set(), [True], []
    for line in RULES_TEMPLATE.read_text().splitlines():
        if condition := re.match(r"{% if (.+) %}$", line.strip()):
            conditions.append(has[condition[1]])
            kept.append(kept[-1] and conditions[-1])
        elif line.strip() == "{% else %}":
            kept[-1] = kept[-2] and not conditions[-1]
        elif line.strip() == "{% endif %}":
            kept.pop()
            conditions.pop()
        elif (alert := re.match(r"\s*- alert: (\w+)", line)) and kept[-1]:
            names.add(alert[1])
    return names


def prometheus(on, node, *arguments: str):
    command = " ".join(shlex.quote(part) for part in arguments)
    output = on(node).check_output(
        f"python3 {PROMETHEUS_QUERY_HELPER} {node.address}:{PROMETHEUS_PORT} {command}"
    )
    return json.loads(output)


def test_node_exporter_runs_on_the_private_address_only(on, any_node):
    host = on(any_node)
    assert host.service("prometheus-node-exporter").is_running
    assert host.socket(f"tcp://{any_node.address}:{NODE_EXPORTER_PORT}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{NODE_EXPORTER_PORT}").is_listening


def test_prometheus_listens_on_the_private_address_only(on, monitoring_node):
    host = on(monitoring_node)
    service = host.service("prometheus")
    assert service.is_running and service.is_enabled
    assert host.socket(f"tcp://{monitoring_node.address}:{PROMETHEUS_PORT}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{PROMETHEUS_PORT}").is_listening


def scraped_targets(on, monitoring_node) -> list[dict]:
    """Prometheus's targets once each has been scraped at least once: right after a deploy
    (`make deploy && make verify`), new ones are "unknown" until their first scrape."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        targets = prometheus(on, monitoring_node, "summary")["targets"]
        if all(t["health"] != "unknown" for t in targets) or time.monotonic() > deadline:
            return targets
        time.sleep(2)


def test_prometheus_scrapes_every_exporter(on, monitoring_node, fleet):
    targets = scraped_targets(on, monitoring_node)
    exporters = [
        target
        for target in targets
        if target["job"] != "wssfleet" and not target["job"].startswith("app_")
    ]
    down = [f"{t['job']} on {t['host']}: {t['error']}" for t in exporters if t["health"] != "up"]
    assert not down, down
    assert {target["job"] for target in exporters} == {
        "haproxy",
        "canary",
        "redis",
        "node",
        "prometheus",
    }
    assert sum(target["job"] == "node" for target in exporters) == len(fleet.nodes)


def test_prometheus_scrapes_every_app_instance_that_serves_metrics(on, monitoring_node, fleet):
    targets = scraped_targets(on, monitoring_node)
    for name, app in sorted(fleet.settings.apps.items()):
        mine = sorted(
            (target["server"], target["health"])
            for target in targets
            if target["job"] == f"app_{name}"
        )
        expected = sorted(
            (f"{worker.name}-{port}", "up")
            for worker in fleet.app_workers(name)
            for port in app.ports()
            if app.metrics_path
        )
        assert mine == expected, (name, mine)


def test_prometheus_scrapes_the_instance(on, fleet, worker_instance):
    node, port = worker_instance
    server = f"{node.name}-{port}"
    targets = scraped_targets(on, fleet.monitoring)
    mine = [target for target in targets if target["server"] == server]
    assert [target["health"] for target in mine] == ["up"], mine


def firing_alerts(on, monitoring_node, about) -> list[str]:
    """Alerts that fire about what ``about`` selects, once those that resolve within a minute
    (a host just back: its next scrape and rule evaluation) have had that minute."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        firing = [
            f"{alert['name']}: {alert['summary']}"
            for alert in prometheus(on, monitoring_node, "alerts")
            if alert["state"] == "firing"
            and alert["name"] not in EVENT_ALERTS
            and about(alert["labels"])
        ]
        # The watchdog fires always, on purpose; that it does is checked below.
        firing = [alert for alert in firing if not alert.startswith("WssfleetWatchdog:")]
        if not firing or time.monotonic() > deadline:
            return firing
        time.sleep(5)


def test_no_alert_fires_about_the_host(on, fleet, any_node):
    firing = firing_alerts(on, fleet.monitoring, lambda labels: labels.get("host") == any_node.name)
    assert not firing, firing


def test_no_fleet_wide_alert_fires_and_the_rules_are_loaded(on, fleet, monitoring_node):
    firing = firing_alerts(on, monitoring_node, lambda labels: "host" not in labels)
    assert not firing, firing
    loaded = on(monitoring_node).check_output(
        "promtool check rules /etc/prometheus/wssfleet-rules.yml"
    )
    assert f"SUCCESS: {len(shipped_rules(fleet))} rules found" in loaded
    watchdog = [
        alert
        for alert in prometheus(on, monitoring_node, "alerts")
        if alert["name"] == "WssfleetWatchdog" and alert["state"] == "firing"
    ]
    assert watchdog, "the watchdog does not fire: the dead man's switch would page"


def test_the_certificates_last_renewal_succeeded(on, monitoring_node, fleet):
    # The figures come with the node exporters' first scrape after a deploy.
    scraped_targets(on, monitoring_node)
    if not fleet.settings.acme:
        # No renewal job: what each master serves, which the expiry alert watches.
        served = prometheus(
            on, monitoring_node, "query", "wssfleet_served_certificate_not_after_seconds"
        )
        assert len(served) == len(fleet.masters), served
        assert all(float(sample["value"][1]) > time.time() for sample in served), served
        return
    samples = prometheus(on, monitoring_node, "query", '{__name__=~"wssfleet_certificate_.*"}')
    values = {sample["metric"]["__name__"]: float(sample["value"][1]) for sample in samples}
    assert values.get("wssfleet_certificate_not_after_seconds", 0) > 0, values
    # Before the renewal job first runs there is no outcome to check; after, it must be 1.
    if "wssfleet_certificate_renewal_last_attempt_timestamp_seconds" in values:
        assert values["wssfleet_certificate_renewal_last_success"] == 1, values
    else:
        assert "wssfleet_certificate_renewal_last_success" not in values, values
