"""The Prometheus config and alert rules as a deploy renders them: promtool accepts them, and
each alert fires on the series that mean trouble, after its rule's time, and not on a burst."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from roles.monitoring import CANARY_SCRAPE_INTERVAL
from tests.unit.helpers import PEBBLE, render
from wssfleet_control.checkout import REPO
from wssfleet_control.hostside.layout import CANARY_STALL_AFTER_SECONDS
from wssfleet_control.inventory import Node
from wssfleet_control.settings import resolve

PROMTOOL = REPO / "build/prometheus/usr/bin/promtool"
WORKER = 'job="wssfleet", instance="10.0.0.2:9001", host="w1", server="w1-8001"'
# What the deploy hands the rules about the canary (roles/monitoring.py).
CANARY = {
    "canary_interval": CANARY_SCRAPE_INTERVAL,
    "canary_stall_after": CANARY_STALL_AFTER_SECONDS,
}


def promtool(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    if not PROMTOOL.exists():
        pytest.fail(f"{PROMTOOL} is missing: run 'make tools'")
    return subprocess.run([str(PROMTOOL), *arguments], capture_output=True, text=True, cwd=cwd)


def rendered_rules(directory: Path, masters: int = 1, front_door: str = "", **settings) -> Path:
    """The alert rules as a deploy renders them for those settings, in a file."""
    path = directory / "wssfleet-rules.yml"
    path.write_text(
        render(
            "monitoring",
            "wssfleet-rules.yml.j2",
            settings=resolve({**PEBBLE, **settings}),
            masters=masters,
            redis_nodes=masters,
            front_door=front_door,
            **CANARY,
        )
    )
    return path


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    return rendered_rules(tmp_path, alert_drop_percent=2)


def test_the_rendered_config_and_rules_pass_promtool(tmp_path, rules):
    settings = resolve({**PEBBLE, "alertmanagers": ["10.0.0.9:9093"]})
    master = Node("m", "10.0.0.1", {})
    worker = Node("w1", "10.0.0.2", {})
    config = tmp_path / "prometheus.yml"
    config.write_text(
        render(
            "monitoring",
            "prometheus.yml.j2",
            settings=settings,
            rules=rules,
            instances=[
                {"host": "w1", "address": "10.0.0.2", "metrics_port": 9001, "server": "w1-8001"}
            ],
            nodes=[master, worker],
            masters=[master],
            redis_nodes=[master],
            monitoring=master,
            address="10.0.0.1",
            port=9090,
            haproxy_port=8405,
            canary_port=9311,
            canary_scrape_interval="2s",
            redis_exporter_port=9121,
            node_exporter_port=9100,
        )
    )
    checked = promtool("check", "config", str(config), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 17 rules found" in checked.stdout, checked.stdout
    text = config.read_text()
    jobs = [line.split(":")[1].strip() for line in text.splitlines() if "job_name:" in line]
    assert jobs == ["wssfleet", "haproxy", "canary", "redis", "node", "prometheus"]
    assert '- targets: ["10.0.0.1:9311"]' in text and "scrape_interval: 2s" in text
    assert '- targets: ["10.0.0.2:9001"]\n        labels:\n          host: "w1"\n' in text
    assert '            - "10.0.0.9:9093"' in text
    assert '- targets: ["10.0.0.1:8405"]' in text and '- targets: ["10.0.0.1:9121"]' in text


def alert(labels: dict[str, str], annotations: dict[str, str]) -> dict:
    return {"exp_labels": labels, "exp_annotations": annotations}


def with_runbooks(tests: dict) -> dict:
    """Every alert carries the link to its runbook: expected in each alert the tests expect."""
    for test in tests["tests"]:
        for expected in test["alert_rule_test"]:
            runbook = f"docs/runbooks.md#{expected['alertname'].lower()}"
            for fired in expected["exp_alerts"]:
                fired["exp_annotations"]["runbook"] = runbook
    return tests


def passes_promtool_tests(tmp_path: Path, tests: dict, name: str) -> None:
    """promtool's rule tests pass (each expected alert with its runbook link)."""
    test_file = tmp_path / name
    # YAML is a superset of JSON: promtool reads this as its test file.
    test_file.write_text(json.dumps(with_runbooks(tests), indent=1))
    result = promtool("test", "rules", test_file.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_alert_fires_after_its_rules_time_and_not_before(tmp_path, rules):
    worker_labels = {
        "job": "wssfleet",
        "instance": "10.0.0.2:9001",
        "host": "w1",
        "server": "w1-8001",
    }
    certificate = {
        "job": "node",
        "instance": "10.0.0.1:9100",
        "host": "m",
        "certificate": "wssfleet",
    }
    tests = {
        "rule_files": [rules.name],
        "evaluation_interval": "10s",
        "tests": [
            {
                # Stopped at 30 s: pending from then, firing once down for 30 s.
                "interval": "10s",
                "input_series": [{"series": f"up{{{WORKER}}}", "values": "1 1 1 0x20"}],
                "alert_rule_test": [
                    {"eval_time": "50s", "alertname": "WssfleetInstanceDown", "exp_alerts": []},
                    {
                        "eval_time": "70s",
                        "alertname": "WssfleetInstanceDown",
                        "exp_alerts": [
                            alert(
                                {**worker_labels, "severity": "critical"},
                                {
                                    "summary": "wssfleet instance w1-8001 is down",
                                    "description": "10.0.0.2:9001 on w1 has not answered for 30 s.",
                                },
                            )
                        ],
                    },
                ],
            },
            {
                # A renewal run fails at 20 s; the next one, at 60 s, succeeds.
                "interval": "10s",
                "input_series": [
                    {
                        "series": "wssfleet_certificate_renewal_last_success"
                        '{job="node", instance="10.0.0.1:9100", host="m", '
                        'certificate="wssfleet"}',
                        "values": "1 1 0 0 0 0 1 1",
                    }
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "30s",
                        "alertname": "WssfleetCertificateRenewalFailed",
                        "exp_alerts": [
                            alert(
                                {**certificate, "severity": "critical"},
                                {
                                    "summary": "the last certificate renewal on m failed",
                                    "description": "See `journalctl -t wssfleet-renew` on the "
                                    "master; `make renew` retries.",
                                },
                            )
                        ],
                    },
                    {
                        "eval_time": "70s",
                        "alertname": "WssfleetCertificateRenewalFailed",
                        "exp_alerts": [],
                    },
                ],
            },
            {
                # Valid from 0 to 3,000 s: a third of its lifetime is left from 2,000 s on,
                # and the alert fires 10 minutes later.
                "interval": "1m",
                "input_series": [
                    {
                        "series": "wssfleet_certificate_not_before_seconds"
                        '{job="node", instance="10.0.0.1:9100", host="m", '
                        'certificate="wssfleet"}',
                        "values": "0x60",
                    },
                    {
                        "series": "wssfleet_certificate_not_after_seconds"
                        '{job="node", instance="10.0.0.1:9100", host="m", '
                        'certificate="wssfleet"}',
                        "values": "3000x60",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "40m",
                        "alertname": "WssfleetCertificateExpiringSoon",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "45m",
                        "alertname": "WssfleetCertificateExpiringSoon",
                        "exp_alerts": [
                            alert(
                                {**certificate, "severity": "critical"},
                                {
                                    "summary": "the certificate expires in 5m 0s",
                                    "description": "Less than a third of its lifetime left; "
                                    "see wssfleet_certificate_renewal_last_success and the "
                                    "wssfleet-renew journal.",
                                },
                            )
                        ],
                    },
                ],
            },
            {
                # 3 drops a second beside 97 deliveries (3%, above the 2% set) for 30
                # minutes; a one-minute burst of 50 a second before it stays quiet.
                "interval": "1m",
                "input_series": [
                    {
                        "series": f'wssfleet_drops_total{{{WORKER}, cause="rate_limit"}}',
                        "values": "0 3000 3000x8 3000+180x30",
                    },
                    {
                        "series": f'wssfleet_messages_delivered_total{{{WORKER}, type="message"}}',
                        "values": "0+5820x40",
                    },
                ],
                "alert_rule_test": [
                    {"eval_time": "9m", "alertname": "WssfleetDropRateHigh", "exp_alerts": []},
                    {
                        "eval_time": "35m",
                        "alertname": "WssfleetDropRateHigh",
                        "exp_alerts": [
                            alert(
                                {
                                    "instance": "10.0.0.2:9001",
                                    "host": "w1",
                                    "server": "w1-8001",
                                    "severity": "warning",
                                },
                                {
                                    "summary": "wssfleet instance w1-8001 drops 3% of its frames",
                                    "description": "Above alert_drop_percent=2% for 10 "
                                    "minutes: see wssfleet_drops_total by cause.",
                                },
                            )
                        ],
                    },
                ],
            },
        ],
    }
    passes_promtool_tests(tmp_path, tests, "tests.yml")


def test_the_high_availability_alerts_fire_on_a_move_a_failover_and_a_missing_replica(tmp_path):
    rules = tmp_path / "wssfleet-rules.yml"
    rules.write_text(
        render(
            "monitoring",
            "wssfleet-rules.yml.j2",
            settings=resolve(PEBBLE),
            masters=2,
            redis_nodes=2,
            front_door="10.0.0.100",
            **CANARY,
        )
    )
    checked = promtool("check", "rules", rules.name, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 23 rules found" in checked.stdout, checked.stdout

    def node(host: str) -> str:
        return f'job="node", instance="{host}:9100", host="{host}"'

    def redis(host: str, role: str) -> str:
        labels = f'job="redis", instance="{host}:9121", host="{host}", role="{role}"'
        return f"redis_instance_info{{{labels}}}"

    tests = {
        "rule_files": [rules.name],
        "evaluation_interval": "10s",
        "tests": [
            {
                # The front door moves from m1 to m2 at 30 s; nobody holds it from 2 min on.
                "interval": "10s",
                "input_series": [
                    {
                        "series": f"wssfleet_front_door_held{{{node('m1')}}}",
                        "values": "1 1 1 0x9 0x20",
                    },
                    {
                        "series": f"wssfleet_front_door_held{{{node('m2')}}}",
                        "values": "0 0 0 1x9 0x20",
                    },
                ],
                "alert_rule_test": [
                    {"eval_time": "20s", "alertname": "WssfleetFrontDoorMoved", "exp_alerts": []},
                    {
                        "eval_time": "60s",
                        "alertname": "WssfleetFrontDoorMoved",
                        "exp_alerts": [
                            alert(
                                {
                                    "job": "node",
                                    "instance": "m2:9100",
                                    "host": "m2",
                                    "severity": "warning",
                                },
                                {
                                    "summary": "the front door moved to m2",
                                    "description": "10.0.0.100 changed masters in the last 10 "
                                    "minutes; see make status.",
                                },
                            )
                        ],
                    },
                    {
                        "eval_time": "60s",
                        "alertname": "WssfleetFrontDoorNotHeldOnce",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "3m",
                        "alertname": "WssfleetFrontDoorNotHeldOnce",
                        "exp_alerts": [
                            alert(
                                {"severity": "critical"},
                                {
                                    "summary": "0 masters hold the front door",
                                    "description": "Exactly one master must hold 10.0.0.100; "
                                    "check keepalived on the masters.",
                                },
                            )
                        ],
                    },
                ],
            },
            {
                # Redis fills past 80 % of maxmemory at 60 s: firing 5 minutes later.
                "interval": "30s",
                "input_series": [
                    {
                        "series": 'redis_memory_used_bytes{job="redis", instance="r1:9121", '
                        'host="r1"}',
                        "values": "700 790 850x20",
                    },
                    {
                        "series": 'redis_memory_max_bytes{job="redis", instance="r1:9121", '
                        'host="r1"}',
                        "values": "1000x22",
                    },
                ],
                "alert_rule_test": [
                    {"eval_time": "5m", "alertname": "WssfleetRedisMemoryHigh", "exp_alerts": []},
                    {
                        "eval_time": "7m",
                        "alertname": "WssfleetRedisMemoryHigh",
                        "exp_alerts": [
                            alert(
                                {
                                    "job": "redis",
                                    "instance": "r1:9121",
                                    "host": "r1",
                                    "severity": "warning",
                                },
                                {
                                    "summary": "Redis on r1 holds 85% of its maxmemory",
                                    "description": "At redis_maxmemory every publish is "
                                    "refused; see the runbook for what fills it.",
                                },
                            )
                        ],
                    },
                ],
            },
            {
                # r2, a replica, is promoted at 30 s; r1 is gone, so no replica is left.
                "interval": "10s",
                "input_series": [
                    {"series": redis("r2", "slave"), "values": "1 1 1 _x20"},
                    {"series": redis("r2", "master"), "values": "_ _ _ 1x20"},
                    {
                        "series": 'redis_connected_slaves{job="redis", instance="r2:9121", '
                        'host="r2"}',
                        "values": "0x23",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "40s",
                        "alertname": "WssfleetRedisFailover",
                        "exp_alerts": [
                            alert(
                                {
                                    "job": "redis",
                                    "instance": "r2:9121",
                                    "host": "r2",
                                    "role": "master",
                                    "severity": "warning",
                                },
                                {
                                    "summary": "Redis on r2 became the primary",
                                    "description": "The Sentinels failed over to it; see make "
                                    "status and the redis-sentinel journal.",
                                },
                            )
                        ],
                    },
                    {
                        "eval_time": "3m",
                        "alertname": "WssfleetRedisReplicaMissing",
                        "exp_alerts": [
                            alert(
                                {"severity": "critical"},
                                {
                                    "summary": "the Redis primary has 0 replicas connected",
                                    "description": "1 expected; a replica is down, cut off or "
                                    "resyncing.",
                                },
                            )
                        ],
                    },
                ],
            },
        ],
    }
    passes_promtool_tests(tmp_path, tests, "tests.yml")


def test_the_capacity_alerts_fire_on_a_full_resource_and_the_watchdog_always(tmp_path, rules):
    node = 'job="node", instance="m:9100", host="m"'
    disk = f'{node}, device="/dev/sda1", fstype="ext4", mountpoint="/"'
    haproxy = 'job="haproxy", instance="10.0.0.1:8405", host="m"'
    refused = f'{WORKER}, reason="bus_unavailable"'

    def fires(name: str, after: str, before: str, labels: dict, annotations: dict) -> list:
        return [
            {"eval_time": before, "alertname": name, "exp_alerts": []},
            {"eval_time": after, "alertname": name, "exp_alerts": [alert(labels, annotations)]},
        ]

    tests = {
        "rule_files": [rules.name],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # 95 % of maxconn from minute 2; 5 % of the disk and of memory left from
                    # minute 2; 3 refused publishes a second from minute 2 (a tmpfs full is
                    # no alarm).
                    {"series": f"haproxy_process_max_connections{{{haproxy}}}", "values": "100x30"},
                    {
                        "series": f"haproxy_process_current_connections{{{haproxy}}}",
                        "values": "10 10 95x28",
                    },
                    {"series": f"node_filesystem_size_bytes{{{disk}}}", "values": "100x30"},
                    {"series": f"node_filesystem_avail_bytes{{{disk}}}", "values": "50 50 5x28"},
                    {
                        "series": f'node_filesystem_avail_bytes{{{node}, fstype="tmpfs", '
                        'mountpoint="/run", device="tmpfs"}',
                        "values": "0x30",
                    },
                    {
                        "series": f'node_filesystem_size_bytes{{{node}, fstype="tmpfs", '
                        'mountpoint="/run", device="tmpfs"}',
                        "values": "100x30",
                    },
                    {"series": f"node_memory_MemTotal_bytes{{{node}}}", "values": "100x30"},
                    {"series": f"node_memory_MemAvailable_bytes{{{node}}}", "values": "50 50 5x28"},
                    {
                        "series": f"wssfleet_requests_refused_total{{{refused}}}",
                        "values": "0 0+180x29",
                    },
                ],
                "alert_rule_test": [
                    *fires(
                        "WssfleetHAProxyConnectionsHigh",
                        "8m",
                        "5m",
                        {
                            **dict(job="haproxy", instance="10.0.0.1:8405", host="m"),
                            "severity": "warning",
                        },
                        {
                            "summary": "HAProxy on m holds 95% of its maxconn",
                            "description": "Raise haproxy_maxconn (the host's open-file limit "
                            "allows it) or add a master.",
                        },
                    ),
                    *fires(
                        "WssfleetDiskFilling",
                        "13m",
                        "10m",
                        {
                            "job": "node",
                            "instance": "m:9100",
                            "host": "m",
                            "device": "/dev/sda1",
                            "fstype": "ext4",
                            "mountpoint": "/",
                            "severity": "warning",
                        },
                        {
                            "summary": "/ on m has 5% free",
                            "description": "Free space below 10 % for 10 minutes.",
                        },
                    ),
                    *fires(
                        "WssfleetMemoryLow",
                        "13m",
                        "10m",
                        {"job": "node", "instance": "m:9100", "host": "m", "severity": "warning"},
                        {
                            "summary": "m has 5% of its memory available",
                            "description": "Available memory below 10 % for 10 minutes.",
                        },
                    ),
                    *fires(
                        "WssfleetPublishesRefused",
                        "17m",
                        "10m",
                        {
                            "instance": "10.0.0.2:9001",
                            "host": "w1",
                            "server": "w1-8001",
                            "severity": "warning",
                        },
                        {
                            "summary": "wssfleet instance w1-8001 refuses 3 publishes a second",
                            "description": "For 10 minutes: see "
                            "wssfleet_requests_refused_total by reason.",
                        },
                    ),
                    {
                        "eval_time": "0m",
                        "alertname": "WssfleetWatchdog",
                        "exp_alerts": [
                            alert(
                                {"severity": "none"},
                                {
                                    "summary": "the alerting pipeline works",
                                    "description": "Route this alert to a dead man's switch; "
                                    "it is not a problem.",
                                },
                            )
                        ],
                    },
                ],
            }
        ],
    }
    passes_promtool_tests(tmp_path, tests, "capacity.yml")


def test_with_runbook_base_url_every_alert_links_to_its_runbook_absolutely(tmp_path):
    base = "https://wiki.example.com/ops/wssfleet/runbooks"
    path = rendered_rules(tmp_path, 2, "10.0.0.100/24", runbook_base_url=base)
    checked = promtool("check", "rules", str(path), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    blocks = path.read_text().split("- alert: ")[1:]
    assert len(blocks) == 23
    for block in blocks:
        anchor = block.split()[0].lower()
        assert f'runbook: "docs/runbooks.md#{anchor}"' in block, block
        assert f'runbook_url: "{base}#{anchor}"' in block, block


def test_an_app_without_a_healthy_instance_alerts_after_30_s(tmp_path):
    chat = {"source": "chat", "command": "node server.js", "path": "/chat", "port": 8111}
    rules = rendered_rules(tmp_path, apps={"chat": chat})
    checked = promtool("check", "rules", rules.name, cwd=tmp_path)
    assert "SUCCESS: 18 rules found" in checked.stdout, checked.stdout + checked.stderr
    backend = 'job="haproxy", instance="10.0.0.1:8405", host="m"'
    tests = {
        "rule_files": [rules.name],
        "evaluation_interval": "10s",
        "tests": [
            {
                # The app's last instance fails at 30 s; the built-in service's stay up.
                "interval": "10s",
                "input_series": [
                    {
                        "series": f'haproxy_backend_active_servers{{{backend}, proxy="app_chat"}}',
                        "values": "2 2 1 0x20",
                    },
                    {
                        "series": f'haproxy_backend_active_servers{{{backend}, proxy="workers"}}',
                        "values": "0x20",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "50s",
                        "alertname": "WssfleetAppNoHealthyInstance",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "70s",
                        "alertname": "WssfleetAppNoHealthyInstance",
                        "exp_alerts": [
                            alert(
                                {
                                    "job": "haproxy",
                                    "instance": "10.0.0.1:8405",
                                    "host": "m",
                                    "proxy": "app_chat",
                                    "severity": "critical",
                                },
                                {
                                    "summary": "no instance of app_chat is healthy on m's HAProxy",
                                    "description": "Its clients are refused (503): see make "
                                    "status and the app's journal.",
                                },
                            )
                        ],
                    },
                ],
            }
        ],
    }
    passes_promtool_tests(tmp_path, tests, "apps.yml")


def test_a_provided_certificate_alerts_14_days_before_it_expires_and_not_on_acme_rules(tmp_path):
    rules = rendered_rules(
        tmp_path,
        certificate_source="files",
        certificate_file="site.pem",
        certificate_key_file="site.key",
    )
    text = rules.read_text()
    # certbot's figures do not exist here: its alerts would fire or never could.
    assert "WssfleetCertificateRenewalFailed" not in text
    assert "WssfleetCertificateMetricsMissing" not in text
    served = 'wssfleet_served_certificate_not_after_seconds{job="node",instance="m:9100",host="m"}'
    day = 86400
    tests = {
        "rule_files": [rules.name],
        "evaluation_interval": "1h",
        "tests": [
            {
                # Expires 15 days after the start: quiet for the first day, firing after it.
                "interval": "1h",
                "input_series": [{"series": served, "values": f"{15 * day}x48"}],
                "alert_rule_test": [
                    {
                        "eval_time": "23h",
                        "alertname": "WssfleetProvidedCertificateExpiring",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "25h",
                        "alertname": "WssfleetProvidedCertificateExpiring",
                        "exp_alerts": [
                            alert(
                                {"severity": "critical"},
                                {
                                    "summary": "the certificate a master serves expires in "
                                    "13d 23h 0m 0s",
                                    "description": "certificate_source=files: give renewed "
                                    "files, then make deploy.",
                                },
                            )
                        ],
                    },
                ],
            },
            {
                "interval": "10m",
                "input_series": [],
                "alert_rule_test": [
                    {
                        # Evaluated hourly here: absent at 0 h, still absent at 1 h.
                        "eval_time": "1h",
                        "alertname": "WssfleetProvidedCertificateMetricsMissing",
                        "exp_alerts": [
                            alert(
                                {"severity": "warning"},
                                {
                                    "summary": "no master reports the certificate it serves",
                                    "description": "The textfile /var/lib/prometheus/"
                                    "node-exporter/wssfleet_served_certificate.prom is missing "
                                    "or unread.",
                                },
                            )
                        ],
                    }
                ],
            },
        ],
    }
    passes_promtool_tests(tmp_path, tests, "provided-certificate-tests.yml")


def test_the_canary_alerts_within_15_s_of_an_instance_that_stops_delivering(tmp_path, rules):
    """Issue 36: the canary's gauge as Prometheus scrapes it every 2 s. One instance starts
    owing a message at 20 s (its gauge counts up from then); the alert fires once it owes
    one 5 s old, at 26 s, 6 s after the stall: inside 15 s. The other instance, whose gauge
    touches 4 s (a front-door failover's wait), never alerts; nor does the publisher's gauge
    below 15 s."""
    canary = 'job="canary", instance="10.0.0.1:9311", host="m"'
    stalled = " ".join(["0"] * 10 + [str(n * 2) for n in range(0, 10)])
    wobbly = " ".join(["0"] * 10 + ["2", "4", "0"] + ["0"] * 7)
    tests = {
        "rule_files": [rules.name],
        "evaluation_interval": "2s",
        "tests": [
            {
                "interval": "2s",
                "input_series": [
                    {
                        "series": f'wssfleet_canary_overdue_seconds{{{canary}, server="w1-8001"}}',
                        "values": stalled,
                    },
                    {
                        "series": f'wssfleet_canary_overdue_seconds{{{canary}, server="w1-8002"}}',
                        "values": wobbly,
                    },
                    {
                        "series": f"wssfleet_canary_since_acknowledged_seconds{{{canary}}}",
                        "values": "1 1 1 1 1 3 5 7 9 11 13 15 1 1 1 17 19 21",
                    },
                ],
                "alert_rule_test": [
                    {"eval_time": "24s", "alertname": "WssfleetCanaryStalled", "exp_alerts": []},
                    {
                        "eval_time": "26s",
                        "alertname": "WssfleetCanaryStalled",
                        "exp_alerts": [
                            alert(
                                {
                                    "job": "canary",
                                    "instance": "10.0.0.1:9311",
                                    "host": "m",
                                    "server": "w1-8001",
                                    "severity": "critical",
                                },
                                {
                                    "summary": "w1-8001 stopped delivering the canary's "
                                    "messages (seen from m)",
                                    "description": "Its oldest owed message was acknowledged "
                                    "6s ago; its clients miss messages.",
                                },
                            )
                        ],
                    },
                    {
                        "eval_time": "22s",
                        "alertname": "WssfleetCanaryCannotPublish",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "32s",
                        "alertname": "WssfleetCanaryCannotPublish",
                        "exp_alerts": [
                            alert(
                                {
                                    "job": "canary",
                                    "instance": "10.0.0.1:9311",
                                    "host": "m",
                                    "severity": "critical",
                                },
                                {
                                    "summary": "the canary on m has had no publish "
                                    "acknowledged for 19s",
                                    "description": "Publishing through the front door fails; "
                                    "see make status and the canary's journal.",
                                },
                            )
                        ],
                    },
                ],
            }
        ],
    }
    passes_promtool_tests(tmp_path, tests, "canary.yml")
