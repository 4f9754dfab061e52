"""The service's configuration, read from WSSFLEET_* environment variables.

In production the variables come from the systemd EnvironmentFile the deploy writes
(/etc/wssfleet/wssfleet.env); every value is checked at start, and a bad one stops the
process with a message that names the variable.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

PREFIX = "WSSFLEET_"

# HS256 keys shorter than the hash output weaken the signature (RFC 7518 section 3.2).
MIN_SECRET_BYTES = 32


class ConfigError(ValueError):
    """A WSSFLEET_* variable is missing or invalid; the message names it and the fix."""


def _integer(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return parse


def _seconds(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw)
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high} seconds")
        return value

    return parse


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(item.strip().rstrip("/") for item in raw.split(",") if item.strip())
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ValueError(f"{origin!r} is not an origin like https://example.com")
    return origins


def _redis_url(raw: str) -> str:
    if raw and urlsplit(raw).scheme not in ("redis", "rediss"):
        raise ValueError("must be a redis:// or rediss:// URL, or empty to run without Redis")
    return raw


def _secret(raw: str) -> str:
    if len(raw.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes")
    return raw


@dataclass(frozen=True)
class Config:
    """Everything one service process needs; see ``VARIABLES`` for the documentation."""

    jwt_secret: str
    port: int = 8000
    bind: str = "127.0.0.1"
    worker_name: str = ""
    redis_url: str = ""
    allowed_origins: tuple[str, ...] = ()
    max_message_bytes: int = 65536
    send_queue_messages: int = 256
    messages_per_second: int = 50
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    shutdown_timeout: float = 10.0
    channel: str = "lobby"

    @property
    def worker_label(self) -> str:
        return self.worker_name or f"{socket.gethostname()}:{self.port}"


# name -> (Config field, parser, documentation)
VARIABLES: dict[str, tuple[str, Callable[[str], object], str]] = {
    "JWT_SECRET": ("jwt_secret", _secret, "HS256 key that signs client tokens (required)"),
    "PORT": ("port", _integer(1, 65535), "TCP port of this process"),
    "BIND": ("bind", str, "address to listen on"),
    "WORKER_NAME": ("worker_name", str, "label sent in the welcome message (host:port)"),
    "REDIS_URL": ("redis_url", _redis_url, "redis:// URL of the pub/sub bus; empty: local only"),
    "ALLOWED_ORIGINS": ("allowed_origins", _origins, "comma-separated Origin allow-list"),
    "MAX_MESSAGE_BYTES": ("max_message_bytes", _integer(128, 16 * 2**20), "largest frame"),
    "SEND_QUEUE_MESSAGES": ("send_queue_messages", _integer(1, 100_000), "per-client backlog"),
    "MESSAGES_PER_SECOND": ("messages_per_second", _integer(1, 100_000), "per-client rate"),
    "PING_INTERVAL": ("ping_interval", _seconds(1, 3600), "seconds between keepalive pings"),
    "PING_TIMEOUT": ("ping_timeout", _seconds(1, 3600), "seconds to wait for a pong"),
    "SHUTDOWN_TIMEOUT": ("shutdown_timeout", _seconds(0.1, 300), "seconds to close on SIGTERM"),
    "DEFAULT_CHANNEL": ("channel", str, "channel of the demo page"),
}


def load(environ: Mapping[str, str] | None = None) -> Config:
    """Build a Config from the environment, raising ConfigError on the first bad variable."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for suffix, (attribute, parse, doc) in VARIABLES.items():
        name = PREFIX + suffix
        raw = environ.get(name)
        if raw is None:
            if suffix == "JWT_SECRET":
                raise ConfigError(f"{name} is not set: set it to a random string ({doc})")
            continue
        try:
            values[attribute] = parse(raw.strip())
        except ValueError as error:
            raise ConfigError(f"{name}={raw!r} is invalid: {error} ({doc})") from None
    unknown = sorted(
        key for key in environ if key.startswith(PREFIX) and key[len(PREFIX) :] not in VARIABLES
    )
    if unknown:
        raise ConfigError(
            f"unknown variable {unknown[0]}: known ones are "
            + ", ".join(PREFIX + suffix for suffix in VARIABLES)
        )
    return Config(**values)  # type: ignore[arg-type]
