"""Every deployment setting: its type, default, bounds and meaning, in one pydantic model.

An inventory sets them in the ``wssfleet`` dict of its ``all`` group. They are validated once,
before any host is touched: a bad value stops the deploy with a message that names the setting
and the fix. The client settings are the service's own (``wssfleet.config.ClientPolicy``):
the deploy renders them into the service's environment file with the service's model, which
reads them back. ``wssfleet settings`` prints docs/settings.md's table from this module.
"""

from __future__ import annotations

import ipaddress
import math
import re
import shlex
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)

from wssfleet.config import ClientPolicy
from wssfleet_control.hostside.layout import (
    BUILTIN_APP,
    CERTBOT_PORT,
    HAPROXY_METRICS_PORT,
    HAPROXY_PEERS_PORT,
    NODE_EXPORTER_PORT,
    PROMETHEUS_PORT,
    REDIS_EXPORTER_PORT,
)

ACME_SERVERS = {
    "letsencrypt": "https://acme-v02.api.letsencrypt.org/directory",
    "letsencrypt-staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}
PORTS_USED_ON_MASTER = {
    22: "SSH",
    80: "HTTP",
    443: "HTTPS",
    CERTBOT_PORT: "certbot's HTTP-01 listener",
    HAPROXY_PEERS_PORT: "HAProxy's peers (several masters)",
}
# The monitoring ports (roles/monitoring.py), each on the private address only.
MONITORING_PORTS = {
    NODE_EXPORTER_PORT: "node_exporter",
    REDIS_EXPORTER_PORT: "redis_exporter",
    HAPROXY_METRICS_PORT: "HAProxy's Prometheus exporter",
    PROMETHEUS_PORT: "Prometheus",
}
MAX_WORKER_PROCESSES = 64


# Settings an earlier release had, and what to set instead.
REPLACED = {
    "send_queue_messages": "a slow client's backlog is now bounded in bytes; set "
    "send_buffer_bytes instead (default 1048576), or remove it",
    "history_message_bytes": "each channel's history is now bounded in bytes; set "
    "history_max_bytes instead (default 524288), or remove it",
}


class SettingsError(ValueError):
    """A setting is wrong; the message names it and says how to fix it."""


def _pattern(regex: str, fix: str) -> AfterValidator:
    compiled = re.compile(regex)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(fix)
        return value

    return AfterValidator(check)


DnsName = Annotated[
    str,
    _pattern(
        r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{1,62}",
        "give a lower-case DNS name like wss.example.com",
    ),
]
# A name on the certificate: a DNS name, or a wildcard for one label under one
# (certificate_source acme_dns, files or private_ca: HTTP-01 cannot prove a wildcard).
CertificateName = Annotated[
    str,
    _pattern(
        r"(\*\.)?(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{1,62}",
        "give a lower-case DNS name like wss.example.com, or a wildcard like *.example.com",
    ),
]
Duration = Annotated[
    str, _pattern(r"\d+(us|ms|s|m|h|d)", "give a duration like 500ms, 30s, 5m or 1h")
]
Memory = Annotated[str, _pattern(r"[1-9]\d*(kb|mb|gb)", "give a size like 256mb or 1gb")]
HostPort = Annotated[
    str,
    _pattern(
        r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252}|[0-9a-fA-F:.\[\]]{0,60}):\d{1,5}",
        "give host:port like 10.0.0.9:9093",
    ),
]
# Rendered into the alert rules' YAML in double quotes: no quote, space, backslash or '#'.
RunbookUrl = Annotated[
    str,
    _pattern(
        r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%!$&()*+,;=:@/-]*)?",
        "give the http(s) URL of your copy of docs/runbooks.md, without a #fragment, like "
        "https://wiki.example.com/wssfleet/runbooks",
    ),
]
Email = Annotated[
    str,
    _pattern(
        r"|[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,63}",
        "give an e-mail address like ops@example.com",
    ),
]


MEMORY_UNITS = {"kb": 2**10, "mb": 2**20, "gb": 2**30}
# A stream entry's memory, from MEMORY USAGE of 1,000-entry streams on Redis 7.0: 38, 244, 659
# and 5,436 bytes an entry for messages of 16, 200, 512 and 4,096 bytes; a third more than the
# message plus 24 bytes covers each.
STREAM_ENTRY_FACTOR = 4 / 3
STREAM_ENTRY_BYTES = 24
# Client buffers, the pub/sub output buffers and Redis's own structures.
REDIS_BASE_BYTES = 32 * 2**20
# A remembered publish id: its key, its offset and its place in two sorted sets. Measured with
# the deploy's functions on Redis 7.0 (used_memory over 20,000 ids): 653 bytes for a 4-character
# channel, a 27-character subject and a 34-character id; 1,132 at the longest (64, 64, 66).
PUBLISH_ID_BYTES = 1152


def memory_bytes(size: str) -> int:
    """Bytes in a Redis size like 256mb (Redis's units are powers of 1024)."""
    return int(size[:-2]) * MEMORY_UNITS[size[-2:]]


DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds_of(duration: str) -> float:
    """An HAProxy duration (a Duration setting) in seconds."""
    number = duration.rstrip("umshd")
    return int(number) * DURATION_UNITS[duration[len(number) :]]


# The settings each DNS-01 provider (acme_dns_provider) reads; no other provider takes them.
DNS_PROVIDER_OWNERS = {
    "rfc2136": ("acme_dns_server", "acme_dns_tsig_key"),
    "cloudflare": ("acme_dns_api_url",),
    "route53": ("acme_dns_route53_access_key_id", "acme_dns_api_url"),
}
DNS_PROVIDER_SETTINGS = tuple(
    dict.fromkeys(n for names in DNS_PROVIDER_OWNERS.values() for n in names)
)
# A path of plain characters (no option-like leading dash): paths reach command lines.
PLAIN_PATH = re.compile(r"[A-Za-z0-9_./~@+][A-Za-z0-9_./~@+-]{0,1023}")
# An https:// URL of plain characters: it reaches certbot's command line.
ACME_URL = re.compile(r"https://[A-Za-z0-9.-]+(:\d{1,5})?(/[A-Za-z0-9._~%/-]*)?")


def _acme_server(value: str) -> str:
    if value in ACME_SERVERS or ACME_URL.fullmatch(value):
        return value
    raise ValueError(f"give {' or '.join(ACME_SERVERS)}, or the https:// URL of an ACME directory")


def _bundle(value: str) -> str:
    if value and (not PLAIN_PATH.fullmatch(value) or not Path(value).is_file()):
        raise ValueError("give the path of a PEM file on the control machine")
    return value


def _address_or_empty(value: str) -> str:
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("give an IP address, like 192.0.2.53") from None
    return value


def _tsig_key_name(value: str) -> str:
    if value and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}", value):
        raise ValueError("give a key name of letters, digits and . _ - (like acme-update)")
    return value


def _dns_api_url(value: str) -> str:
    """A DNS provider's API: https, or http to a private address (a stand-in or a proxy on
    your own network: the token crosses nothing else)."""
    if not value:
        return value
    url = urlsplit(value)
    if url.scheme == "https" and url.hostname and not url.query and not url.fragment:
        return value.rstrip("/")
    if url.scheme == "http" and url.hostname:
        try:
            private = ipaddress.ip_address(url.hostname).is_private
        except ValueError:
            private = False
        if private and not url.query and not url.fragment:
            return value.rstrip("/")
    raise ValueError(
        "give an https:// URL (http:// only to a private IP address), like "
        "https://api.cloudflare.com/client/v4"
    )


def _aws_access_key_id(value: str) -> str:
    if value and not re.fullmatch(r"[A-Z0-9]{16,128}", value):
        raise ValueError(
            "give an AWS access key ID (capitals and digits, like AKIAIOSFODNN7EXAMPLE)"
        )
    return value


def _plain_path(value: str) -> str:
    if value and not PLAIN_PATH.fullmatch(value):
        raise ValueError("give a path of letters, digits and ./_~@+- (no leading dash)")
    return value


def _advert_interval(value: str) -> str:
    """VRRP version 3 counts adverts in centiseconds, up to 40.95 s."""
    milliseconds = round(seconds_of(value) * 1000, 3)
    if not 50 <= milliseconds <= 10_000 or milliseconds % 10:
        raise ValueError("give 50ms to 10s in steps of 10ms, like 200ms or 1s")
    return value


def _failover_after(value: str) -> str:
    """The Sentinels ping every second (more often below that): under a second they would
    promote a replica over one slow reply; over a minute a lost primary stops every publish
    for that long."""
    if not 1 <= seconds_of(value) <= 60:
        raise ValueError("give 1s to 60s, like 1500ms or 5s")
    return value


def _front_door(value: str) -> str:
    if not value:
        return value
    try:
        address = ipaddress.IPv4Interface(value)
    except ValueError:
        raise ValueError("give an IPv4 address with its prefix, like 10.0.0.100/24") from None
    if address.network.prefixlen == 32 or not address.is_private:
        raise ValueError("give a private IPv4 address with its network's prefix, like /24")
    return value


def _network(value: str) -> str:
    """A source network (CIDR, or one address) in its canonical form."""
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as error:
        if "host bits set" in str(error):
            loose = ipaddress.ip_network(value, strict=False)
            raise ValueError(f"{value} has host bits set: did you mean {loose}?") from None
        raise ValueError(
            f"give a network like 203.0.113.0/24 or 2001:db8::/48, not {value!r}"
        ) from None
    return str(network)


SourceNetwork = Annotated[str, AfterValidator(_network)]


def _command(value: str) -> str:
    try:
        words = shlex.split(value)
    except ValueError as error:
        raise ValueError(f"{error}: quote it as a shell would") from None
    if not words:
        raise ValueError("give a command line, like: pass show wssfleet/production")
    return value


def _processes(value: Any) -> int | str:
    if value == "auto":
        return value
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 1 <= value <= MAX_WORKER_PROCESSES
    ):
        raise ValueError(f"give 'auto' or a whole number from 1 to {MAX_WORKER_PROCESSES}")
    return value


# An app's name becomes its system user (wssfleet-app-NAME, at most 32 characters), its units
# and its HAProxy backend.
APP_NAME = re.compile(r"[a-z][a-z0-9-]{0,18}[a-z0-9]|[a-z]")
# The built-in service's paths (service/wssfleet/routes.py) and those HAProxy keeps inside.
BUILTIN_PATHS = ("/ws", "/app.js", "/wssfleet-client.js", "/healthz", "/internal")
# What the fleet sets in every app's environment: an app's env may not set them.
FLEET_ENVIRONMENT = re.compile(r"PORT|HOST|REDIS_.*|WSSFLEET_.*")
UrlPath = Annotated[
    str,
    _pattern(
        r"(/[A-Za-z0-9._~-]+)+",
        "give a path like /chat: a slash, plain characters, no slash at the end",
    ),
]
EnvironmentName = Annotated[
    str, _pattern(r"[A-Z_][A-Z0-9_]{0,63}", "give an upper-case name like LOG_LEVEL")
]


class App(BaseModel):
    """One team's WebSocket server: where its code is, how an instance starts, its route."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    source: Annotated[str, _pattern(PLAIN_PATH.pattern, "give a directory path")] = Field(
        description="the app's directory on the control machine (relative: to the inventory's)"
    )
    command: Annotated[str, AfterValidator(_command)] = Field(
        description="how one instance starts, run in its release directory (node server.js, "
        "python app.py, ./server); it listens on PORT and HOST, and {port} in it is PORT"
    )
    path: UrlPath | None = Field(
        default=None,
        description="route the requests whose path is this or below it (/chat, /chat/...)",
    )
    domain: DnsName | None = Field(
        default=None,
        description="route the requests for this name (added to the certificate); with path, "
        "both must match",
    )
    health_path: UrlPath | None = Field(
        default=None,
        description="an HTTP path answering 200 when an instance is ready; without it, a TCP "
        "connection is the check",
    )
    drain_path: UrlPath | None = Field(
        default=None,
        description="a path the rollout POSTs ?seconds=drain_seconds to before an instance "
        "restarts: the app closes its clients (1012) over that window, and the restart waits "
        "until HAProxy has none left there; never served to clients",
    )
    metrics_path: UrlPath | None = Field(
        default=None,
        description="where an instance serves Prometheus metrics on its port: scraped by the "
        "monitoring hosts, never served to clients",
    )
    port: int = Field(ge=1024, le=65000, description="the first instance's port on a worker")
    instances: int = Field(
        default=1,
        ge=1,
        le=MAX_WORKER_PROCESSES,
        description="instances per worker, on port, port + 1, ...",
    )
    workers: tuple[str, ...] = Field(
        default=(), description="the workers it runs on, by inventory name; empty: all"
    )
    env: dict[EnvironmentName, str] = Field(
        default_factory=dict, description="more environment for every instance"
    )
    secrets: tuple[EnvironmentName, ...] = Field(
        default=(),
        description="environment variables that each get a secret the deploy generates once "
        "and keeps in the secrets file (or your secrets_command gives as app_NAME_secret_VAR)",
    )
    redis: bool = Field(
        default=False,
        description="its own Redis user, for pub/sub on channels starting app:NAME: and no "
        "keys (REDIS_URL, REDIS_PREFIX, and the Sentinels when there are some)",
    )
    stop_timeout: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="seconds an instance has after SIGTERM to close its WebSockets (1001 or "
        "1012) and exit before it is killed",
    )
    maxconn: int = Field(
        default=10000, ge=1, le=1_000_000, description="connections HAProxy sends one instance"
    )
    timeout_tunnel: Duration | None = Field(
        default=None,
        description="inactivity that closes one of its open WebSockets; empty: "
        "haproxy_timeout_tunnel",
    )
    sticky: bool = Field(
        default=False,
        description="a client returns to the instance that served it (a cookie HAProxy sets): "
        "for Socket.IO's long-polling transport",
    )
    memory_max: Memory | None = Field(
        default=None,
        description="each instance's memory cap (512mb); empty: a share of the worker's memory",
    )

    @field_validator("workers", "secrets", mode="before")
    @classmethod
    def _list_as_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @field_validator("env")
    @classmethod
    def _own_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if FLEET_ENVIRONMENT.fullmatch(name):
                raise ValueError(f"{name} is set by the fleet: give the app another name")
            if "\n" in value or "\0" in value:
                raise ValueError(f"{name}'s value spans lines: give one line")
        return env

    @model_validator(mode="after")
    def _routed(self) -> App:
        if self.path is None and self.domain is None:
            raise ValueError("give path (like /chat), domain, or both: how clients reach it")
        for name in self.secrets:
            if FLEET_ENVIRONMENT.fullmatch(name) or name in self.env:
                raise ValueError(
                    f"secrets names {name}, which "
                    + ("the fleet sets" if name not in self.env else "env sets too")
                    + ": give the secret another name"
                )
        return self

    def ports(self) -> list[int]:
        return list(range(self.port, self.port + self.instances))

    @property
    def route(self) -> tuple[str, str]:
        return (self.domain or "*", self.path or "/")


class Settings(ClientPolicy):
    """A deployment: names and certificates, workers, HAProxy, Redis, rollouts."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    # Names and certificates
    domain: DnsName = Field(description="DNS name clients use; it must resolve to the master")
    extra_domains: tuple[CertificateName, ...] = Field(
        default=(),
        description="more names on the same certificate; a wildcard (*.example.com) needs "
        "certificate_source acme_dns, files or private_ca",
    )
    certificate_source: Literal["acme_http", "acme_dns", "files", "private_ca"] = Field(
        default="acme_http",
        description="where the masters' certificate comes from: acme_http (an ACME server over "
        "HTTP-01 through the masters' port 80), acme_dns (an ACME server over DNS-01: "
        "acme_dns_* and the secret acme_dns_tsig_secret), files (yours: certificate_file and "
        "certificate_key_file, or certificate_command), private_ca (the deployment's own CA, "
        "made on the control machine; `wssfleet private-ca` prints its root for clients)",
    )
    certificate_file: Annotated[str, AfterValidator(_plain_path)] = Field(
        default="",
        description="with certificate_source=files: PEM file of the certificate then its "
        "intermediates, on the control machine (relative to the inventory's directory)",
    )
    certificate_key_file: Annotated[str, AfterValidator(_plain_path)] = Field(
        default="",
        description="with certificate_source=files: the certificate's private key (PEM, "
        "unencrypted), on the control machine; the deploy copies it to the masters only",
    )
    certificate_command: Annotated[str, AfterValidator(_command)] | None = Field(
        default=None,
        description="with certificate_source=files, instead of the two files: a command run on "
        "the control machine that prints the certificate, its intermediates and its key (PEM), "
        "e.g. from a vault",
    )
    acme_dns_provider: Literal["rfc2136", "cloudflare", "route53"] = Field(
        default="rfc2136",
        description="with certificate_source=acme_dns: how certbot writes the TXT records: "
        "rfc2136 (dynamic updates to your DNS server: acme_dns_server, acme_dns_tsig_key), "
        "cloudflare (the API token is the secret acme_dns_cloudflare_api_token), route53 "
        "(acme_dns_route53_access_key_id, or the host's own IAM role)",
    )
    acme_dns_server: Annotated[str, AfterValidator(_address_or_empty)] = Field(
        default="",
        description="with acme_dns_provider=rfc2136: the IP address of the DNS server that "
        "takes RFC 2136 dynamic updates for the domains' zone (BIND, Knot, PowerDNS)",
    )
    acme_dns_port: int = Field(default=53, ge=1, le=65535, description="its DNS port")
    acme_dns_tsig_key: Annotated[str, AfterValidator(_tsig_key_name)] = Field(
        default="",
        description="the name of the TSIG key it accepts updates signed with (the key itself "
        "is the secret acme_dns_tsig_secret: secrets file, secrets_command or "
        "WSSFLEET_SECRET_ACME_DNS_TSIG_SECRET)",
    )
    acme_dns_tsig_algorithm: Literal["HMAC-SHA256", "HMAC-SHA384", "HMAC-SHA512"] = Field(
        default="HMAC-SHA512", description="the TSIG key's algorithm"
    )
    acme_dns_route53_access_key_id: Annotated[str, AfterValidator(_aws_access_key_id)] = Field(
        default="",
        description="with acme_dns_provider=route53: the access key of an IAM user allowed "
        "route53:ListHostedZones, GetChange and ChangeResourceRecordSets (its secret is the "
        "secret acme_dns_route53_secret_access_key); empty: the master's own role (an EC2 "
        "instance profile)",
    )
    acme_dns_api_url: Annotated[str, AfterValidator(_dns_api_url)] = Field(
        default="",
        description="with acme_dns_provider cloudflare or route53: the provider's API at "
        "another address (an API proxy, an AWS partition's Route 53 endpoint); empty: the "
        "provider's own",
    )
    acme_dns_propagation_seconds: int = Field(
        default=60,
        ge=0,
        le=3600,
        description="how long certbot waits after its update before the CA looks (the time "
        "your DNS servers take to agree)",
    )
    acme_server: Annotated[str, AfterValidator(_acme_server)] = Field(
        default="letsencrypt",
        description="letsencrypt, letsencrypt-staging, or an ACME directory URL",
    )
    acme_email: Email = Field(default="", description="account e-mail; required by Let's Encrypt")
    acme_ca_bundle: Annotated[str, AfterValidator(_bundle)] = Field(
        default="",
        description="PEM bundle (control machine) that certbot trusts for a private ACME server",
    )
    acme_root_bundle: Annotated[str, AfterValidator(_bundle)] = Field(
        default="",
        description="PEM bundle (control machine) of the roots the ACME server's certificates "
        "chain to, when not a public CA's: with several masters, each checks a certificate "
        "another master serves against it before serving it too",
    )
    acme_profile: Literal["", "classic", "tlsserver", "shortlived"] = Field(
        default="",
        description="ACME profile to ask for (Let's Encrypt: classic, tlsserver, shortlived = "
        "about 6 days); empty: the CA's default; a CA that does not offer it stops the deploy",
    )
    renewal_interval: Duration = Field(
        default="6h",
        description="how often cron asks certbot whether to renew (minutes dividing an hour or "
        "hours dividing a day); certbot follows the CA's renewal information (ARI)",
    )
    renewal_random_delay: Duration = Field(
        default="1h",
        description="each renewal run first waits a random time up to this, shorter than "
        "renewal_interval, so fleets do not all ask the CA at once",
    )
    # Front door (several masters)
    front_door_address: Annotated[str, AfterValidator(_front_door)] = Field(
        default="",
        description="with several masters: the floating address/prefix (e.g. 10.0.0.100/24) "
        "that keepalived moves to a healthy master and the domain resolves to; empty: every "
        "master's address is in DNS and clients fail over between them",
    )
    front_door_router_id: int = Field(
        default=51,
        ge=1,
        le=255,
        description="the VRRP router id of the front door, unique on its network segment",
    )
    front_door_advert_interval: Annotated[Duration, AfterValidator(_advert_interval)] = Field(
        default="200ms",
        description="how often the holder announces the front door (VRRP version 3); the "
        "others take it over after about three missed: 200ms moves it in under a second",
    )
    # Workers
    worker_processes: Annotated[Literal["auto"] | int, PlainValidator(_processes)] = Field(
        default="auto", description="service processes per worker host; auto = one per CPU"
    )
    worker_base_port: int = Field(
        default=8001, ge=1024, le=65000, description="first service port; the next ones follow"
    )
    metrics_port_offset: int = Field(
        default=1000,
        ge=1,
        le=30000,
        description="each service process serves Prometheus metrics on its port plus this "
        "(8001: 9001), to the monitoring host only",
    )
    rollout_health_timeout: int = Field(
        default=60,
        ge=5,
        le=3600,
        description="seconds a restarted instance has to answer /healthz before the rollout stops",
    )
    rebalance_rate: int = Field(
        default=20,
        ge=1,
        le=100_000,
        description="clients a second the rebalancer may move (close with 1012) fleet-wide, "
        "to keep every instance within 20% of the mean",
    )
    # HAProxy
    haproxy_maxconn: int = Field(
        default=50000, ge=100, le=2_000_000, description="connections HAProxy accepts at once"
    )
    haproxy_timeout_connect: Duration = Field(
        default="2s",
        description="time to connect to a worker before trying another (private network)",
    )
    haproxy_timeout_client: Duration = Field(
        default="30s", description="client inactivity before the upgrade"
    )
    haproxy_timeout_server: Duration = Field(
        default="30s", description="worker inactivity before the upgrade"
    )
    haproxy_timeout_http_request: Duration = Field(
        default="10s", description="time a client has to send its request"
    )
    haproxy_timeout_tunnel: Duration = Field(
        default="1h", description="inactivity that closes an open WebSocket"
    )
    haproxy_hard_stop_after: Duration = Field(
        default="1h", description="how long a reloaded HAProxy keeps old WebSockets open"
    )
    haproxy_close_spread: Duration = Field(
        default="5m",
        description="after a reload, the old process's WebSockets are closed evenly over this "
        "window (shorter than haproxy_hard_stop_after)",
    )
    haproxy_connection_rate_limit: int = Field(
        default=1000,
        ge=10,
        le=1_000_000,
        description="connections a source IP may open per 10 s, paced per second; "
        "refused attempts do not count",
    )
    haproxy_connections_per_source: int = Field(
        default=5000,
        ge=10,
        le=2_000_000,
        description="connections a source IP may hold open at once (a carrier's or office's NAT "
        "is one source: leave room for it); more are refused before TLS",
    )
    admission_exempt_sources: tuple[SourceNetwork, ...] = Field(
        default=(),
        description="networks (CIDR) the per-source admission limits do not apply to: an "
        "uptime monitor, a TLS scanner, a NAT you vouch for; TLS and tokens still do",
    )
    hsts_max_age: int = Field(
        default=63072000, ge=0, le=2**31, description="Strict-Transport-Security max-age in seconds"
    )
    secrets_command: Annotated[str, AfterValidator(_command)] | None = Field(
        default=None,
        description="a command run on the control machine whose output is a JSON object of "
        "secrets (a vault, pass, op): its values, and any WSSFLEET_SECRET_<NAME> in the "
        "environment, take precedence over the secrets file and are never written to it",
    )
    internal_tls: bool = Field(
        default=False,
        description="encrypt and authenticate HAProxy -> workers, workers -> Redis and the "
        "masters' HAProxy peers with TLS and the deployment's own CA; on when hosts share only "
        "a public network",
    )
    apps: dict[str, App] = Field(
        default_factory=dict,
        description="the team's own WebSocket servers, by name, beside the built-in service: "
        "source, command, path and/or domain, health_path, port (docs/apps.md)",
    )
    # Redis
    redis_port: int = Field(
        default=6379, ge=1024, le=65535, description="Redis port on the redis host"
    )
    redis_sentinel_port: int = Field(
        default=26379,
        ge=1024,
        le=65535,
        description="Redis Sentinel's port, with several redis hosts (three Sentinels watch "
        "the primary and promote a replica when it is lost)",
    )
    redis_failover_after: Annotated[Duration, AfterValidator(_failover_after)] = Field(
        default="1500ms",
        description="how long the Sentinels wait for a primary that does not answer before "
        "they promote a replica (sooner: faster failover, more false alarms; 1s to 60s)",
    )
    redis_maxmemory: Memory = Field(
        default="256mb",
        description="Redis memory cap; settings whose history cannot fit are refused",
    )

    # Monitoring
    prometheus_retention: Duration = Field(
        default="15d", description="how long Prometheus keeps samples"
    )
    prometheus_scrape_interval: Duration = Field(
        default="10s", description="how often Prometheus scrapes every target"
    )
    alertmanagers: tuple[HostPort, ...] = Field(
        default=(),
        description="Alertmanagers (host:port) that Prometheus sends firing alerts to; "
        "empty: alerts show in Prometheus and make status only",
    )
    runbook_base_url: RunbookUrl | None = Field(
        default=None,
        description="where your team reads docs/runbooks.md (a wiki, the repository's web "
        "view): each alert carries runbook_url, this plus its entry's #anchor, for "
        "Alertmanager, chat and pagers; unset: only the repository path",
    )
    alert_drop_percent: int = Field(
        default=1,
        ge=1,
        le=100,
        description="alert when a process drops more than this share of its frames for 10 minutes",
    )
    alert_5xx_percent: int = Field(
        default=5,
        ge=1,
        le=100,
        description="alert when more than this share of HAProxy's answers are 5xx for 10 minutes",
    )

    @field_validator("apps")
    @classmethod
    def _app_names(cls, apps: dict[str, App]) -> dict[str, App]:
        for name in apps:
            if name == BUILTIN_APP or not APP_NAME.fullmatch(name):
                raise ValueError(
                    f"app name {name!r}: give 1 to 20 lower-case letters, digits and dashes, "
                    f"starting with a letter (not {BUILTIN_APP!r}, the built-in service's)"
                )
        return apps

    @field_validator("extra_domains", "alertmanagers", "admission_exempt_sources", mode="before")
    @classmethod
    def _list_as_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    def _certificate_source_complete(self) -> None:
        wildcards = [name for name in self.extra_domains if name.startswith("*.")]
        if wildcards and self.certificate_source == "acme_http":
            raise ValueError(
                f"extra_domains {', '.join(wildcards)}: HTTP-01 cannot prove a wildcard; set "
                "certificate_source to acme_dns (or files, private_ca), or list the names"
            )
        self._dns_provider_complete()
        files = self.certificate_file or self.certificate_key_file
        if self.certificate_source != "files":
            given = [
                name
                for name in ("certificate_file", "certificate_key_file", "certificate_command")
                if getattr(self, name)
            ]
            if given:
                raise ValueError(
                    f"setting {given[0]} is used only with certificate_source='files' (it is "
                    f"{self.certificate_source!r}): remove it, or set certificate_source='files'"
                )
        elif self.certificate_command and files:
            raise ValueError(
                "settings certificate_command and certificate_file/certificate_key_file both "
                "give the certificate: keep one way"
            )
        elif not self.certificate_command and not (
            self.certificate_file and self.certificate_key_file
        ):
            raise ValueError(
                "certificate_source='files' needs certificate_file and certificate_key_file "
                "(PEM files on the control machine), or certificate_command"
            )

    def _dns_provider_complete(self) -> None:
        """Each DNS-01 provider's settings with it, and none of another's."""
        rfc2136 = ("acme_dns_server", "acme_dns_tsig_key")
        if self.certificate_source != "acme_dns":
            if given := [name for name in DNS_PROVIDER_SETTINGS if getattr(self, name)]:
                raise ValueError(
                    f"setting {given[0]} is used only with certificate_source='acme_dns' (it "
                    f"is {self.certificate_source!r}): remove it, or set "
                    "certificate_source='acme_dns'"
                )
            return
        provider = self.acme_dns_provider
        if provider == "rfc2136":
            missing = [name for name in rfc2136 if not getattr(self, name)]
            if missing:
                raise ValueError(
                    f"acme_dns_provider='rfc2136' needs {' and '.join(missing)}: the DNS "
                    "server that takes RFC 2136 updates for your zone, and its TSIG key's name"
                )
        owned = DNS_PROVIDER_OWNERS[provider]
        if stray := [n for n in DNS_PROVIDER_SETTINGS if n not in owned and getattr(self, n)]:
            users = [p for p, names in DNS_PROVIDER_OWNERS.items() if stray[0] in names]
            raise ValueError(
                f"setting {stray[0]} is used only with acme_dns_provider "
                f"{' or '.join(map(repr, users))} (it is {provider!r}): remove it"
            )

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        self._certificate_source_complete()
        if self.acme and self.acme_server in ACME_SERVERS and not self.acme_email:
            raise ValueError(
                f"setting acme_email is required with acme_server={self.acme_server!r}: "
                "Let's Encrypt writes there about expiring certificates"
            )
        interval = seconds_of(self.renewal_interval)
        minutes, hours = interval / 60, interval / 3600
        every_minutes = minutes.is_integer() and 1 <= minutes < 60 and 60 % minutes == 0
        every_hours = hours.is_integer() and 1 <= hours <= 24 and 24 % hours == 0
        if not (every_minutes or every_hours):
            raise ValueError(
                f"setting renewal_interval={self.renewal_interval!r} cannot be a cron schedule: "
                "give minutes that divide an hour (1m, 5m, 30m) or hours that divide a day "
                "(1h, 6h, 12h, 24h)"
            )
        if seconds_of(self.renewal_random_delay) >= interval:
            raise ValueError(
                f"setting renewal_random_delay={self.renewal_random_delay!r} must be shorter "
                f"than renewal_interval={self.renewal_interval!r}: runs would overlap"
            )
        if len(set(self.domains)) != len(self.domains):
            raise ValueError("settings domain and extra_domains repeat a name: list each once")
        if seconds_of(self.haproxy_close_spread) >= seconds_of(self.haproxy_hard_stop_after):
            raise ValueError(
                f"setting haproxy_close_spread={self.haproxy_close_spread!r} must be shorter than "
                f"haproxy_hard_stop_after={self.haproxy_hard_stop_after!r}: the old process is "
                "stopped at the latter, with whatever it still holds"
            )
        needed = self.history_memory_bytes
        if needed > memory_bytes(self.redis_maxmemory):
            raise ValueError(
                f"setting redis_maxmemory={self.redis_maxmemory!r} cannot hold the history and "
                f"the publish ids: history_channels={self.history_channels} x "
                f"history_max_bytes={self.history_max_bytes} (history_size="
                f"{self.history_size} entries each) and publish_ids={self.publish_ids} need "
                f"about {math.ceil(needed / 2**20)}mb; raise redis_maxmemory to at least that, "
                "or lower history_max_bytes, history_channels or publish_ids"
            )
        taken = {**PORTS_USED_ON_MASTER, **MONITORING_PORTS}
        if self.redis_port in taken:
            raise ValueError(
                f"setting redis_port={self.redis_port} clashes with "
                f"{taken[self.redis_port]}: choose another port"
            )
        self._apps_apart()
        if self.worker_base_port + MAX_WORKER_PROCESSES + self.metrics_port_offset > 65535:
            raise ValueError(
                f"settings worker_base_port={self.worker_base_port} and metrics_port_offset="
                f"{self.metrics_port_offset} put metrics ports beyond 65535: lower either"
            )
        return self

    def _apps_apart(self) -> None:
        """No two apps on one route, no app port on a port something else takes."""
        routes: dict[tuple[str, str], str] = {}
        for name, app in self.apps.items():
            path = app.path or ""
            if path in BUILTIN_PATHS or path.startswith(tuple(f"{own}/" for own in BUILTIN_PATHS)):
                raise ValueError(
                    f"setting apps.{name}.path={path!r} is the built-in service's "
                    f"({', '.join(BUILTIN_PATHS)}): give the app another path"
                )
            if app.route in routes:
                raise ValueError(
                    f"settings apps.{routes[app.route]} and apps.{name} both route "
                    f"{app.path or 'every path'} on {app.domain or 'the fleet domain'}: give "
                    "each its own path or domain"
                )
            routes[app.route] = name
        span = self.worker_ports(MAX_WORKER_PROCESSES)
        taken = {
            **{port: "the built-in service" for port in span},
            **{self.metrics_port(port): "the built-in service's metrics" for port in span},
            **PORTS_USED_ON_MASTER,
            **MONITORING_PORTS,
            self.redis_port: "Redis",
            self.redis_sentinel_port: "Redis Sentinel",
        }
        for name, app in sorted(self.apps.items()):
            for port in app.ports():
                if port in taken:
                    raise ValueError(
                        f"setting apps.{name}.port={app.port} (with instances={app.instances}) "
                        f"takes port {port}, which {taken[port]} uses: choose a port range "
                        "nothing else uses"
                    )
                taken[port] = f"app {name}"

    @property
    def history_memory_bytes(self) -> int:
        """Redis memory the history and the publish ids need at most, from the bounds the
        service enforces: every channel's byte budget with the stream's overhead for its
        entries (at most history_size, and no message is under 16 bytes) and a tenth more for
        the allocator, publish_ids remembered ids at their longest, and a base for buffers."""
        entries = min(self.history_size, self.history_max_bytes // 16)
        channel = self.history_max_bytes * STREAM_ENTRY_FACTOR + entries * STREAM_ENTRY_BYTES
        history = int(self.history_channels * channel * 1.1)
        return history + self.publish_ids * PUBLISH_ID_BYTES + REDIS_BASE_BYTES

    @property
    def domains(self) -> list[str]:
        """Every name on the certificate: the fleet's, then the apps' own."""
        own = [self.domain, *self.extra_domains]
        apps = sorted({app.domain for app in self.apps.values() if app.domain} - set(own))
        return own + apps

    @property
    def acme(self) -> bool:
        """Whether an ACME server issues the certificate (certbot renews it on the masters)."""
        return self.certificate_source in ("acme_http", "acme_dns")

    @property
    def dns_provider(self) -> str:
        """The DNS-01 provider certbot writes TXT records through, "" without DNS-01."""
        return self.acme_dns_provider if self.certificate_source == "acme_dns" else ""

    @property
    def origins(self) -> tuple[str, ...]:
        # A wildcard is no origin: list the names it serves in allowed_origins.
        return self.allowed_origins or tuple(
            f"https://{name}" for name in self.domains if not name.startswith("*.")
        )

    @property
    def close_spread_seconds(self) -> float:
        return seconds_of(self.haproxy_close_spread)

    @property
    def admissions_per_second(self) -> int:
        """haproxy_connection_rate_limit as HAProxy enforces it: a tenth of it each second."""
        return math.ceil(self.haproxy_connection_rate_limit / 10)

    @property
    def acme_directory(self) -> str:
        return ACME_SERVERS.get(self.acme_server, self.acme_server)

    def worker_ports(self, processes: int) -> list[int]:
        return list(range(self.worker_base_port, self.worker_base_port + processes))

    def metrics_port(self, service_port: int) -> int:
        """Where the service process on ``service_port`` serves its metrics."""
        return service_port + self.metrics_port_offset

    def metrics_ports(self, processes: int) -> list[int]:
        return [self.metrics_port(port) for port in self.worker_ports(processes)]


def resolve(raw: dict[str, Any] | None) -> Settings:
    """Defaults plus the inventory's values; SettingsError names the first bad one."""
    raw = dict(raw or {})
    for name in raw:
        if name in REPLACED:
            raise SettingsError(f"setting {name!r} is gone: {REPLACED[name]}")
        if name not in Settings.model_fields:
            hint = get_close_matches(name, Settings.model_fields, n=1)
            raise SettingsError(
                f"unknown setting {name!r}"
                + (f": did you mean {hint[0]!r}?" if hint else ": see docs/settings.md")
            )
    try:
        return Settings.model_validate(raw)
    except ValidationError as error:
        raise SettingsError(_explain(error.errors()[0], raw)) from None


def _explain(error: dict[str, Any], raw: dict[str, Any]) -> str:
    """pydantic's first complaint as 'setting NAME=VALUE is invalid: FIX'."""
    if not error["loc"]:
        return error["msg"].removeprefix("Value error, ")
    name = str(error["loc"][0])
    if name == "apps":
        return _explain_app(error, raw)
    field = Settings.model_fields[name]
    if error["type"] == "missing":
        return f"setting {name} is required: {field.description}"
    value = raw.get(name)
    message = error["msg"].removeprefix("Value error, ")
    bounds = {
        key: getattr(item, key)
        for item in _constraints(field)
        for key in ("ge", "le")
        if getattr(item, key, None) is not None
    }
    if bounds and error["type"].startswith(("int", "greater", "less")):
        message = f"give a whole number from {bounds['ge']} to {bounds['le']}"
    elif error["type"] == "tuple_type":
        message = f"give a list: {field.description}"
    elif error["type"] == "string_type":
        message = f"give a string: {field.description}"
    return f"setting {name}={value!r} is invalid: {message}"


def _explain_app(error: dict[str, Any], raw: dict[str, Any]) -> str:
    """An app's complaint as 'setting apps.NAME.FIELD=VALUE is invalid: FIX'."""
    message = error["msg"].removeprefix("Value error, ")
    if len(error["loc"]) == 1:
        return f"setting apps is invalid: {message}"
    app, *rest = [str(part) for part in error["loc"][1:]]
    if not rest:
        if error["type"] in ("dict_type", "model_type"):
            return f"setting apps.{app} is invalid: give a dict of its settings (docs/apps.md)"
        return f"setting apps.{app} is invalid: {message}"
    field = App.model_fields.get(rest[0])
    where = ".".join(["apps", app, *rest])
    if error["type"] == "missing" and field is not None:
        return f"setting {where} is required: {field.description}"
    if error["type"] == "extra_forbidden":
        hint = get_close_matches(rest[0], App.model_fields, n=1)
        return f"setting {where} is unknown" + (
            f": did you mean {hint[0]!r}?" if hint else ": see docs/apps.md"
        )
    value: Any = raw.get("apps", {}).get(app, {})
    for part in rest:
        value = value.get(part) if isinstance(value, dict) else None
    if field is not None and error["type"].startswith(("int", "greater", "less")):
        bounds = {
            key: getattr(item, key)
            for item in field.metadata
            for key in ("ge", "le")
            if getattr(item, key, None) is not None
        }
        message = f"give a whole number from {bounds['ge']} to {bounds['le']}"
    return f"setting {where}={value!r} is invalid: {message}"


def _constraints(field: Any) -> list[Any]:
    return list(field.metadata)


def documented_order() -> list[str]:
    """Names and certificates, then the workers (the service's client settings with them),
    then HAProxy and Redis."""
    own = list(Settings.__annotations__)
    split = own.index("worker_base_port") + 1
    return own[:split] + list(ClientPolicy.model_fields) + own[split:]


def markdown_table() -> str:
    return _table([(name, Settings.model_fields[name]) for name in documented_order()])


def app_markdown_table() -> str:
    """An app's settings (apps.NAME.*), as docs/apps.md lists them."""
    return _table(list(App.model_fields.items()))


def _table(fields: list[tuple[str, Any]]) -> str:
    rows = ["| setting | default | meaning |", "| --- | --- | --- |"]
    for name, field in fields:
        if field.is_required():
            default = "(required)"
        elif field.default_factory is not None:
            default = f"`{field.default_factory()!r}`"
        else:
            default = f"`{field.default!r}`"
        rows.append(f"| `{name}` | {default} | {field.description} |")
    return "\n".join(rows)
