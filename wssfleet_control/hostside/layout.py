"""The host contract: every path, unit, port and name that the roles write and that the
host-side helpers, the rollout, `status` and the tests read. Change one here and every side
follows. Standard library only: it is installed beside the helpers on each host.
"""

from __future__ import annotations

from dataclasses import dataclass

# Where the host-side helpers (this directory) are installed, and the deploy's own state.
HELPERS = "/usr/local/lib/wssfleet"
STATE = "/var/lib/wssfleet"
# A sudo user's uploads of secrets wait here (mode 700, that user's) before they are copied.
UPLOADS = "/var/lib/wssfleet-uploads"
CONFIG_DIRECTORY = "/etc/wssfleet"
# A fingerprint of each secret the host was last deployed with (secret_records.py).
SECRET_RECORD = f"{STATE}/secrets.fingerprints.json"
# On the masters: who holds the fleet lock, and every locked run (fleet_lock.py).
FLEET_LOCK = f"{STATE}/fleet.lock"
AUDIT_LOG = f"{STATE}/audit.log"


def helper(name: str) -> str:
    """Where a host-side helper (wssfleet_control/hostside/<name>) is installed."""
    return f"{HELPERS}/{name}"


# The service on the workers: releases, the environment, one systemd instance per port.
SERVICE_USER = "wssfleet"
SERVICE_HOME = "/opt/wssfleet"
RELEASES = f"{SERVICE_HOME}/releases"
CURRENT = f"{SERVICE_HOME}/current"
# Every release `current` was pointed at, oldest first: what `wssfleet rollback` goes back to.
RELEASE_HISTORY = f"{SERVICE_HOME}/history"
SERVICE_ENVIRONMENT = f"{CONFIG_DIRECTORY}/wssfleet.env"
INSTANCE_UNIT_FILE = "/etc/systemd/system/wssfleet@.service"
INSTANCE_PREFIX = "wssfleet@"
INSTANCES_HELPER = helper("instances.py")
# With internal_tls: each worker's certificate, key and the CA they chain to.
WORKER_TLS_DIRECTORY = f"{CONFIG_DIRECTORY}/tls"
WORKER_INTERNAL_CA = f"{WORKER_TLS_DIRECTORY}/ca.pem"


def instance_unit(port: int | str) -> str:
    """The systemd unit of the service instance listening on ``port``."""
    return f"{INSTANCE_PREFIX}{port}.service"


# HAProxy on the master.
HAPROXY_CONFIG = "/etc/haproxy/haproxy.cfg"
HAPROXY_CANDIDATE = "/etc/haproxy/haproxy.cfg.wssfleet-candidate"
HAPROXY_CERTIFICATE_DIRECTORY = "/etc/haproxy/certs"
HAPROXY_CERTIFICATE = f"{HAPROXY_CERTIFICATE_DIRECTORY}/wssfleet.pem"
# With internal_tls: the CA HAProxy checks the workers' certificates against.
HAPROXY_INTERNAL_CA = "/etc/haproxy/wssfleet-internal-ca.pem"
# With internal_tls and two or more masters: this master's certificate and key, which its
# HAProxy presents to the other masters' (peers); root's alone, read before HAProxy drops root.
HAPROXY_PEER_CERTIFICATE = "/etc/haproxy/wssfleet-peer.pem"
ADMIN_SOCKET = "/run/haproxy/admin.sock"
# Read-only (level user): what the rebalancer, which runs unprivileged, may reach.
STATS_SOCKET = "/run/haproxy/stats.sock"
# Debian's haproxy.service starts the master with -S /run/haproxy-master.sock.
MASTER_SOCKET = "/run/haproxy-master.sock"
# The backend that holds every worker instance, one server each.
BACKEND = "workers"
RUNTIME_HELPER = helper("haproxy_runtime.py")
REBALANCER_HELPER = helper("rebalancer.py")
REBALANCER_UNIT = "wssfleet-rebalancer.service"
# The internal key the rebalancer presents to the workers' /internal/shed: root's only,
# systemd reads it into the rebalancer's environment.
REBALANCER_ENVIRONMENT = "/etc/wssfleet-rebalancer.env"
# A planned move of the front door (front_door_handover.py): while FRONT_DOOR_RELEASE exists,
# keepalived's check fails on this master, so it gives the front door away; what the move
# changed on this host, to undo it.
FRONT_DOOR_RELEASE = "/run/wssfleet-front-door-release"
HANDOVER_STATE = "/run/wssfleet-front-door-handover.json"
HANDOVER_HELPER = helper("front_door_handover.py")
# The canary on each master (roles/canary.py): its key, root's only, read into its
# environment by systemd; the roots it checks the front door's certificate with when they
# are not the system's (a private ACME server, the private CA).
CANARY_HELPER = helper("canary.py")
CANARY_UNIT = "wssfleet-canary.service"
CANARY_ENVIRONMENT = "/etc/wssfleet-canary.env"
CANARY_ROOTS = f"{CONFIG_DIRECTORY}/canary-roots.pem"
# An instance that owes the canary a message acknowledged this many seconds ago has stopped
# delivering: the canary's journal, `status` and WssfleetCanaryStalled say so.
CANARY_STALL_AFTER_SECONDS = 5


def server_name(worker: str, port: int | str) -> str:
    """The HAProxy server of one worker instance, as the config and the runtime API name it."""
    return f"{worker}-{port}"


def backend_server(worker: str, port: int | str, backend: str = BACKEND) -> str:
    """BACKEND/SERVER, as the runtime API's commands take it."""
    return f"{backend}/{server_name(worker, port)}"


# The apps a team brings (settings: apps): each one's releases, environment, units and HAProxy
# backend, laid out as the built-in service's are, under names of its own.
BUILTIN_APP = "wssfleet"
APPS_HOME = "/opt/wssfleet-apps"
APPS_CONFIG_DIRECTORY = "/etc/wssfleet-apps"
# With internal_tls: the deployment's CA certificate (public) where every app can read it.
APPS_INTERNAL_CA = f"{APPS_HOME}/internal-ca.pem"


@dataclass(frozen=True)
class AppLayout:
    """Where one app lives on a worker and how HAProxy names it."""

    name: str
    user: str
    home: str
    environment: str
    unit_file: str
    unit_prefix: str
    backend: str

    @property
    def releases(self) -> str:
        return f"{self.home}/releases"

    @property
    def current(self) -> str:
        return f"{self.home}/current"

    @property
    def history(self) -> str:
        """Every release `current` was pointed at, oldest first (what rollback reads)."""
        return f"{self.home}/history"

    def unit(self, port: int | str) -> str:
        """The systemd unit of the instance listening on ``port``."""
        return f"{self.unit_prefix}{port}.service"

    def server(self, worker: str, port: int | str) -> str:
        """BACKEND/SERVER of one instance, as the runtime API's commands take it."""
        return backend_server(worker, port, self.backend)


SERVICE_LAYOUT = AppLayout(
    BUILTIN_APP,
    SERVICE_USER,
    SERVICE_HOME,
    SERVICE_ENVIRONMENT,
    INSTANCE_UNIT_FILE,
    INSTANCE_PREFIX,
    BACKEND,
)


def app_layout(name: str) -> AppLayout:
    """The layout of the app ``name``; the built-in service's is the one above."""
    if name == BUILTIN_APP:
        return SERVICE_LAYOUT
    return AppLayout(
        name,
        user=f"wssfleet-app-{name}",
        home=f"{APPS_HOME}/{name}",
        environment=f"{APPS_CONFIG_DIRECTORY}/{name}.env",
        unit_file=f"/etc/systemd/system/wssfleet-app-{name}@.service",
        unit_prefix=f"wssfleet-app-{name}@",
        backend=f"app_{name}",
    )


# certbot on the master: it listens here only while it validates, HAProxy routes the
# HTTP-01 challenge to it.
CERTBOT_PORT = 8888
# HAProxy's peers protocol between masters: the admission counters they share.
HAPROXY_PEERS_PORT = 10000
CERTBOT_HOME = "/opt/wssfleet-certbot"
# What operators, cron and the deploy run: a link to the pinned virtualenv's certbot.
CERTBOT = "/usr/local/bin/certbot"
CERT_NAME = "wssfleet"
LINEAGE = f"/etc/letsencrypt/live/{CERT_NAME}"
LIVE_CERTIFICATE = f"{LINEAGE}/cert.pem"
RENEWAL_CONFIG = f"/etc/letsencrypt/renewal/{CERT_NAME}.conf"
DEPLOY_HOOK = helper("haproxy-deploy-hook")
# What cron and `wssfleet renew` run.
RENEW_COMMAND = "/usr/local/sbin/wssfleet-renew"
ACME_CA_BUNDLE = f"{CONFIG_DIRECTORY}/acme-ca.pem"
# With certificate_source acme_dns: the DNS provider's credentials for certbot, root's alone:
# dns-rfc2136's TSIG key, dns-cloudflare's API token, an AWS credentials file for route53.
ACME_DNS_CREDENTIALS = {
    provider: f"{CONFIG_DIRECTORY}/acme-dns-{provider}.ini"
    for provider in ("rfc2136", "cloudflare", "route53")
}
# With several masters: the roots a certificate another master serves must chain to (the
# acme_root_bundle setting; without it, the system's), and the timer that fetches one.
ACME_ROOTS = f"{CONFIG_DIRECTORY}/acme-roots.pem"
# With certificate_source files or private_ca: the certificate the deploy brought (as a
# lineage: fullchain.pem, privkey.pem), root's alone. It also marks that this master serves
# no ACME certificate: the first one from ACME may then come with another key.
PROVIDED_CERTIFICATE = f"{CONFIG_DIRECTORY}/provided-certificate"
# With private_ca: cron swaps in the next certificate (PROVIDED_CERTIFICATE/next) when due.
PROVIDED_RENEWAL_HELPER = helper("provided_renewal.py")
PROVIDED_RENEWAL_CRON = "/etc/cron.d/wssfleet-provided-renewal"
CERTIFICATE_SYNC_HELPER = f"{HELPERS}/certificate_sync.py"
CERTIFICATE_STANDBY_HELPER = f"{HELPERS}/certificate_standby.py"
CERTIFICATE_SYNC_UNIT = "wssfleet-certificate-sync"
RENEWAL_STATE = f"{STATE}/renewal.json"
ACME_INFO_HELPER = helper("acme_info.py")
CERTIFICATE_METRICS_HELPER = helper("certificate_metrics.py")

# Redis, with internal_tls: its certificate, key and the CA.
REDIS_TLS_DIRECTORY = "/etc/redis/tls"
# redis_exporter's copy of the internal CA: it runs as prometheus, and /etc/redis is Redis's.
REDIS_EXPORTER_CA = "/etc/prometheus-redis-exporter/wssfleet-internal-ca.pem"
# The operator's Redis password (root's), and with several redis hosts the Sentinels'
# password (root's), the name they watch the primary by, and where a replica's primary is
# written for its next start.
REDIS_ADMIN_AUTH_FILE = "/etc/redis/wssfleet-admin.auth"
# With several redis hosts: the promotion guard (roles/redis.py, redis_guard.py).
REDIS_GUARD_HELPER = helper("redis_guard.py")
REDIS_GUARD_UNIT = "wssfleet-redis-guard.service"
SENTINEL_AUTH_FILE = "/etc/redis/wssfleet-sentinel.auth"
REDIS_PRIMARY_NAME = "wssfleet"
# Redis's config lives where only root writes: the Sentinels' CONFIG REWRITE (after a
# failover) fails there harmlessly instead of rewriting what the deploy manages.
REDIS_CONFIG_DIRECTORY = "/etc/wssfleet-redis"
REDIS_CONFIG = f"{REDIS_CONFIG_DIRECTORY}/redis.conf"
REDIS_ACL_FILE = f"{REDIS_CONFIG_DIRECTORY}/users.acl"
REDIS_REPLICATION_FILE = f"{REDIS_CONFIG_DIRECTORY}/replication.conf"

# Monitoring: node_exporter's textfile collector and the query helper `status` runs.
TEXTFILE_DIRECTORY = "/var/lib/prometheus/node-exporter"
CERTIFICATE_METRICS_FILE = f"{TEXTFILE_DIRECTORY}/wssfleet_certificate.prom"
PROMETHEUS_QUERY_HELPER = helper("prometheus_query.py")

# Ports on the hosts besides the service's own (settings: worker_base_port).
NODE_EXPORTER_PORT = 9100
REDIS_EXPORTER_PORT = 9121
HAPROXY_METRICS_PORT = 8405
PROMETHEUS_PORT = 9090
CANARY_METRICS_PORT = 9311
