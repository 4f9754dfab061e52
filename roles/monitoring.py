"""Monitoring: node_exporter on every host, redis_exporter beside Redis, HAProxy's own exporter
(roles/haproxy.py) and Prometheus, with wssfleet's alert rules, on the monitoring host (the
master unless the inventory has a ``monitoring`` group).

Every exporter listens on its host's private address and the firewall opens it to the
monitoring host only; Prometheus listens on the monitoring host's private address and is
opened to nobody: operators reach it through an SSH tunnel. Rules and config are candidates
until ``promtool`` accepts them; only then do they replace the live files and Prometheus
reloads (no restart: its samples and alert states stay).
"""

from dataclasses import dataclass
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files

from roles import (
    activate_candidate,
    daemon_running,
    helper_installed,
    secret_template,
    unit_retired,
)
from roles.redis import MONITOR_REDIS_USER
from wssfleet_control import internal_tls
from wssfleet_control.deployment import DeployRun
from wssfleet_control.hostside import layout
from wssfleet_control.hostside.layout import (
    CANARY_METRICS_PORT,
    CANARY_STALL_AFTER_SECONDS,
    HAPROXY_METRICS_PORT,
    NODE_EXPORTER_PORT,
    PROMETHEUS_PORT,
    REDIS_EXPORTER_PORT,
    TEXTFILE_DIRECTORY,
    server_name,
)
from wssfleet_control.inventory import Node

CONFIG = "/etc/prometheus/prometheus.yml"
CONFIG_CANDIDATE = "/etc/prometheus/prometheus.yml.wssfleet-candidate"
RULES = "/etc/prometheus/wssfleet-rules.yml"
RULES_CANDIDATE = "/etc/prometheus/wssfleet-rules.yml.wssfleet-candidate"
# A stopped Prometheus is not reloaded: it reads the new files when it starts.
# The canary's job and alert group: a stall is seen within STALL_AFTER_SECONDS plus two of
# these (a scrape, an evaluation) at most, well inside the 15 s that issue 36 asks for.
CANARY_SCRAPE_INTERVAL = "2s"
RELOAD = "! systemctl is-active --quiet prometheus || systemctl reload prometheus"


@dataclass(frozen=True)
class ScrapedInstance:
    """One service process as Prometheus scrapes it."""

    host: str
    address: str
    metrics_port: int
    server: str


@dataclass(frozen=True)
class ScrapedApp:
    """An app whose instances serve metrics (settings: apps.NAME.metrics_path)."""

    name: str
    metrics_path: str
    instances: list[ScrapedInstance]


def scraped_apps(fleet) -> list[ScrapedApp]:
    """Every app that declares a metrics_path, with each of its instances."""
    return [
        ScrapedApp(
            name,
            app.metrics_path,
            [
                ScrapedInstance(worker.name, worker.address, port, server_name(worker.name, port))
                for worker in fleet.app_workers(name)
                for port in app.ports()
            ],
        )
        for name, app in sorted(fleet.settings.apps.items())
        if app.metrics_path
    ]


@deploy("Host metrics")
def node_exporter(run: DeployRun, node: Node) -> None:
    """node_exporter on this host's private address, with the textfile collector.

    + run: the deploy
    + node: this host
    """
    apt.packages(
        name="Ensure node_exporter is installed",
        packages=["prometheus-node-exporter"],
        no_recommends=True,
    )
    arguments = files.template(
        name="Ensure node_exporter listens on the private address only",
        src=run.template("monitoring", "prometheus-node-exporter.j2"),
        dest="/etc/default/prometheus-node-exporter",
        mode="644",
        address=node.address,
        port=NODE_EXPORTER_PORT,
        textfile_directory=TEXTFILE_DIRECTORY,
    )
    daemon_running(
        name="Ensure node_exporter is running and enabled",
        service="prometheus-node-exporter.service",
        enabled=True,
        restarted=arguments.will_change,
    )


@deploy("Redis metrics")
def redis_exporter(run: DeployRun) -> None:
    """redis_exporter beside Redis, as the introspection-only Redis user.

    + run: the deploy (the redis host, redis_port, the password of wssfleet-monitor)
    """
    fleet = run.fleet
    apt.packages(
        name="Ensure redis_exporter is installed",
        packages=["prometheus-redis-exporter"],
        no_recommends=True,
    )
    tls = fleet.settings.internal_tls
    # Its own copy of the internal CA (a certificate, public): /etc/redis is Redis's alone,
    # and redis_exporter, which runs as prometheus, died at start reading the one there.
    if tls:
        ca_changed = files.put(
            name="Ensure redis_exporter has its copy of the internal CA",
            src=StringIO(internal_tls.ca_certificate(run.secrets)),
            dest=layout.REDIS_EXPORTER_CA,
            mode="644",
            create_remote_dir=True,
        ).will_change
    else:
        ca_changed = files.file(
            name="Ensure no copy of an internal CA is left for redis_exporter",
            path=layout.REDIS_EXPORTER_CA,
            present=False,
        ).will_change
    settings = secret_template(
        name="Ensure redis_exporter's settings are current (contents withheld: a password)",
        src=run.template("monitoring", "prometheus-redis-exporter.j2"),
        dest="/etc/default/prometheus-redis-exporter",
        user="root",
        group="root",
        mode="600",
        address=fleet.node(host.name).address,
        port=REDIS_EXPORTER_PORT,
        redis_address=fleet.node(host.name).address,
        redis_port=fleet.settings.redis_port,
        redis_user=MONITOR_REDIS_USER,
        password=run.secrets["redis_monitor_password"],
        tls_ca=layout.REDIS_EXPORTER_CA if tls else "",
    )
    daemon_running(
        name="Ensure redis_exporter is running and enabled",
        service="prometheus-redis-exporter.service",
        enabled=True,
        restarted=settings.will_change or ca_changed,
    )


@deploy("Prometheus elsewhere")
def prometheus_retired() -> None:
    """On a host that is no longer the monitoring host: its Prometheus stopped (its package
    and data stay, for whoever wants its history)."""
    unit_retired("prometheus.service", "another host monitors the fleet")


@deploy("Prometheus")
def prometheus(run: DeployRun, instances: list[ScrapedInstance]) -> None:
    """Prometheus on the monitoring host: every target, wssfleet's alert rules.

    + run: the deploy (hosts, prometheus_* and alert_* settings)
    + instances: every service process to scrape
    """
    fleet = run.fleet
    monitoring = fleet.node(host.name)
    apt.packages(name="Ensure Prometheus is installed", packages=["prometheus"], no_recommends=True)
    helper_installed("prometheus_query.py")
    rules = files.template(
        name="Ensure the candidate alert rules are rendered",
        src=run.template("monitoring", "wssfleet-rules.yml.j2"),
        dest=RULES_CANDIDATE,
        mode="644",
        settings=fleet.settings,
        masters=len(fleet.masters),
        redis_nodes=len(fleet.redis_nodes),
        canary_interval=CANARY_SCRAPE_INTERVAL,
        canary_stall_after=CANARY_STALL_AFTER_SECONDS,
        front_door=fleet.front_door,
    )
    activate_candidate(
        "Ensure the checked alert rules are live",
        rules,
        RULES_CANDIDATE,
        [
            f"promtool check rules {RULES_CANDIDATE} || {{ rm -f {RULES_CANDIDATE}; exit 1; }}",
            f"install -m 644 {RULES_CANDIDATE} {RULES}",
            RELOAD,
        ],
    )
    config = files.template(
        name="Ensure the candidate Prometheus config is rendered",
        src=run.template("monitoring", "prometheus.yml.j2"),
        dest=CONFIG_CANDIDATE,
        mode="644",
        settings=fleet.settings,
        rules=RULES,
        instances=instances,
        apps=scraped_apps(fleet),
        nodes=fleet.nodes,
        masters=fleet.masters,
        redis_nodes=fleet.redis_nodes,
        monitoring=monitoring,
        address=monitoring.address,
        port=PROMETHEUS_PORT,
        haproxy_port=HAPROXY_METRICS_PORT,
        canary_port=CANARY_METRICS_PORT,
        canary_scrape_interval=CANARY_SCRAPE_INTERVAL,
        redis_exporter_port=REDIS_EXPORTER_PORT,
        node_exporter_port=NODE_EXPORTER_PORT,
    )
    activate_candidate(
        "Ensure the checked Prometheus config is live",
        config,
        CONFIG_CANDIDATE,
        [
            f"promtool check config {CONFIG_CANDIDATE} || {{ rm -f {CONFIG_CANDIDATE}; exit 1; }}",
            f"install -m 644 {CONFIG_CANDIDATE} {CONFIG}",
            RELOAD,
        ],
    )
    arguments = files.template(
        name="Ensure Prometheus listens on the private address only",
        src=run.template("monitoring", "prometheus.j2"),
        dest="/etc/default/prometheus",
        mode="644",
        config=CONFIG,
        address=monitoring.address,
        port=PROMETHEUS_PORT,
        retention=fleet.settings.prometheus_retention,
    )
    daemon_running(
        name="Ensure Prometheus is running and enabled",
        service="prometheus.service",
        enabled=True,
        restarted=arguments.will_change,
    )
