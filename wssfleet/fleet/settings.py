"""Every deployment setting: its default, what it means, and how it is checked.

An inventory sets them in the ``wssfleet`` dict of its ``all`` group. They are validated
here, once, before any host is touched: a bad value stops the deploy with a message that
names the setting and the fix. ``python -m wssfleet.fleet settings`` prints this table.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ACME_SERVERS = {
    "letsencrypt": "https://acme-v02.api.letsencrypt.org/directory",
    "letsencrypt-staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}
DNS_NAME = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{1,62}")
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
DURATION = re.compile(r"\d+(us|ms|s|m|h|d)")
MEMORY = re.compile(r"[1-9]\d*(kb|mb|gb)")
PORTS_USED_ON_MASTER = {22: "SSH", 80: "HTTP", 443: "HTTPS", 8888: "certbot's HTTP-01 listener"}


class SettingsError(ValueError):
    """A setting is wrong; the message names it and says how to fix it."""


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    doc: str
    check: Callable[[Any], Any] = field(default=lambda value: value, repr=False)


def _fail(name: str, value: Any, fix: str) -> SettingsError:
    return SettingsError(f"setting {name}={value!r} is invalid: {fix}")


def _dns_name(name: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not DNS_NAME.fullmatch(value):
            raise _fail(name, value, "give a lower-case DNS name like wss.example.com")
        return value

    return check


def _dns_names(value: Any) -> list[str]:
    if not isinstance(value, list | tuple):
        raise _fail("extra_domains", value, "give a list of DNS names, e.g. ['www.example.com']")
    return [_dns_name("extra_domains")(item) for item in value]


def _integer(name: str, low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _fail(name, value, f"give a whole number from {low} to {high}")
        return value

    return check


def _matching(pattern: re.Pattern[str], fix: str) -> Callable[[str], Callable[[Any], str]]:
    """A checker factory for string settings that must match ``pattern``."""

    def for_setting(name: str) -> Callable[[Any], str]:
        def check(value: Any) -> str:
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise _fail(name, value, fix)
            return value

        return check

    return for_setting


_duration = _matching(DURATION, "give a duration like 500ms, 30s, 5m or 1h")
_memory = _matching(MEMORY, "give a size like 256mb or 1gb")


def _worker_processes(value: Any) -> int | str:
    if value == "auto":
        return value
    return _integer("worker_processes", 1, 64)(value)


def _acme_server(value: Any) -> str:
    if value in ACME_SERVERS:
        return value
    if isinstance(value, str) and urlsplit(value).scheme == "https" and urlsplit(value).netloc:
        return value
    raise _fail(
        "acme_server",
        value,
        f"give {' or '.join(ACME_SERVERS)}, or the https:// URL of an ACME directory",
    )


def _email(value: Any) -> str:
    if value and (not isinstance(value, str) or not EMAIL.fullmatch(value)):
        raise _fail("acme_email", value, "give an e-mail address like ops@example.com")
    return value or ""


def _bundle(value: Any) -> str:
    if value and not Path(value).is_file():
        raise _fail("acme_ca_bundle", value, "give the path of a PEM file on the control machine")
    return value or ""


def _origins(value: Any) -> list[str]:
    if not isinstance(value, list | tuple):
        raise _fail("allowed_origins", value, "give a list like ['https://app.example.com']")
    for origin in value:
        parts = urlsplit(origin) if isinstance(origin, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise _fail("allowed_origins", origin, "each origin is scheme://host[:port]")
    return list(value)


SETTINGS = [
    # Names and certificates
    Setting(
        "domain", None, "DNS name clients use; it must resolve to the master", _dns_name("domain")
    ),
    Setting("extra_domains", [], "more names on the same certificate", _dns_names),
    Setting(
        "acme_server",
        "letsencrypt",
        "letsencrypt, letsencrypt-staging, or an ACME directory URL",
        _acme_server,
    ),
    Setting("acme_email", "", "account e-mail; required by Let's Encrypt", _email),
    Setting(
        "acme_ca_bundle",
        "",
        "PEM bundle (control machine) that certbot trusts for a private ACME server",
        _bundle,
    ),
    # Workers
    Setting(
        "worker_processes",
        "auto",
        "service processes per worker host; auto = one per CPU",
        _worker_processes,
    ),
    Setting(
        "worker_base_port",
        8001,
        "first service port; the next ones follow",
        _integer("worker_base_port", 1024, 65000),
    ),
    Setting(
        "allowed_origins",
        [],
        "browser origins allowed to connect; empty = https://<each domain>",
        _origins,
    ),
    Setting(
        "max_message_bytes",
        65536,
        "largest message a client may send (close 1009)",
        _integer("max_message_bytes", 128, 16 * 2**20),
    ),
    Setting(
        "messages_per_second",
        50,
        "messages a client may send per second",
        _integer("messages_per_second", 1, 100_000),
    ),
    Setting(
        "send_queue_messages",
        256,
        "messages queued for a slow client before it is closed",
        _integer("send_queue_messages", 1, 100_000),
    ),
    Setting(
        "ping_interval", 20, "seconds between keepalive pings", _integer("ping_interval", 1, 3600)
    ),
    Setting(
        "ping_timeout",
        20,
        "seconds without a pong before a peer is dropped",
        _integer("ping_timeout", 1, 3600),
    ),
    # HAProxy
    Setting(
        "haproxy_maxconn",
        50000,
        "connections HAProxy accepts at once",
        _integer("haproxy_maxconn", 100, 2_000_000),
    ),
    Setting(
        "haproxy_timeout_connect",
        "5s",
        "time to connect to a worker",
        _duration("haproxy_timeout_connect"),
    ),
    Setting(
        "haproxy_timeout_client",
        "30s",
        "client inactivity before the upgrade",
        _duration("haproxy_timeout_client"),
    ),
    Setting(
        "haproxy_timeout_server",
        "30s",
        "worker inactivity before the upgrade",
        _duration("haproxy_timeout_server"),
    ),
    Setting(
        "haproxy_timeout_http_request",
        "10s",
        "time a client has to send its request",
        _duration("haproxy_timeout_http_request"),
    ),
    Setting(
        "haproxy_timeout_tunnel",
        "1h",
        "inactivity that closes an open WebSocket",
        _duration("haproxy_timeout_tunnel"),
    ),
    Setting(
        "haproxy_hard_stop_after",
        "1h",
        "how long a reloaded HAProxy keeps old WebSockets open",
        _duration("haproxy_hard_stop_after"),
    ),
    Setting(
        "haproxy_connection_rate_limit",
        300,
        "new connections per source IP per 10 s before refusals",
        _integer("haproxy_connection_rate_limit", 1, 1_000_000),
    ),
    Setting(
        "hsts_max_age",
        63072000,
        "Strict-Transport-Security max-age in seconds",
        _integer("hsts_max_age", 0, 2**31),
    ),
    # Redis
    Setting(
        "redis_port", 6379, "Redis port on the redis host", _integer("redis_port", 1024, 65535)
    ),
    Setting("redis_maxmemory", "256mb", "Redis memory cap", _memory("redis_maxmemory")),
]
BY_NAME = {setting.name: setting for setting in SETTINGS}


@dataclass(frozen=True)
class Settings:
    values: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def domains(self) -> list[str]:
        return [self.values["domain"], *self.values["extra_domains"]]

    @property
    def origins(self) -> list[str]:
        return self.values["allowed_origins"] or [f"https://{name}" for name in self.domains]

    @property
    def acme_directory(self) -> str:
        return ACME_SERVERS.get(self.values["acme_server"], self.values["acme_server"])


def resolve(raw: dict[str, Any] | None) -> Settings:
    """Defaults plus the inventory's values, each checked; SettingsError on the first bad one."""
    raw = dict(raw or {})
    for name in raw:
        if name not in BY_NAME:
            hint = get_close_matches(name, BY_NAME, n=1)
            raise SettingsError(
                f"unknown setting {name!r}"
                + (f": did you mean {hint[0]!r}?" if hint else ": see README, 'Settings'")
            )
    values = {}
    for setting in SETTINGS:
        value = raw.get(setting.name, setting.default)
        if value is None:
            raise SettingsError(f"setting {setting.name} is required: {setting.doc}")
        values[setting.name] = setting.check(value)
    settings = Settings(values)
    if settings.acme_server in ACME_SERVERS and not settings.acme_email:
        raise SettingsError(
            f"setting acme_email is required with acme_server={settings.acme_server!r}: "
            "Let's Encrypt writes there about expiring certificates"
        )
    if len(set(settings.domains)) != len(settings.domains):
        raise SettingsError("settings domain and extra_domains repeat a name: list each once")
    return settings


def markdown_table() -> str:
    rows = ["| setting | default | meaning |", "| --- | --- | --- |"]
    for setting in SETTINGS:
        default = "(required)" if setting.default is None else f"`{setting.default!r}`"
        rows.append(f"| `{setting.name}` | {default} | {setting.doc} |")
    return "\n".join(rows)
