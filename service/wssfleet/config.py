"""The service's settings: one schema for the deploy that writes them and the process that reads
them.

``ClientPolicy`` holds what a deployment decides for all its processes; each field's type,
default, bounds and documentation live here and nowhere else (the control side's deployment
settings inherit them). ``ServiceConfig`` adds what one process needs besides, and reads the
whole of it from ``WSSFLEET_*`` environment variables: the systemd EnvironmentFile that the
deploy renders with ``ServiceConfig.environment()``, so the two cannot disagree on a value.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from wssfleet import auth

PREFIX = "WSSFLEET_"
# HS256 keys shorter than the hash output weaken the signature (RFC 7518 section 3.2).
MIN_SECRET_BYTES = 32


class ConfigError(ValueError):
    """A WSSFLEET_* variable is missing or invalid; the message names it and the fix."""


def _origin(value: str) -> str:
    value = value.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
        raise ValueError("each origin is scheme://host[:port], e.g. https://app.example.com")
    return value


Origin = Annotated[str, AfterValidator(_origin)]


def _channel_pattern(value: str) -> str:
    auth.check_patterns([value])
    return value


ChannelPattern = Annotated[str, AfterValidator(_channel_pattern)]


def _comma_list(value: Any) -> Any:
    """A list setting: the environment file carries it comma-separated, an inventory as a
    list."""
    if isinstance(value, str):
        return tuple(item for item in value.split(",") if item.strip())
    if isinstance(value, list):
        return tuple(value)
    return value


class ClientPolicy(BaseModel):
    """What every client of a deployment may do, how it is kept alive, and how much of each
    channel's past it can recover."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed_origins: tuple[Origin, ...] = Field(
        default=(),
        description="browser origins allowed to connect; empty = https://<each domain>",
    )
    token_default_subscribe: tuple[ChannelPattern, ...] = Field(
        default=(),
        description="channel patterns a token without a subscribe claim may subscribe to; "
        "empty: none (least privilege: tokens say what they may do)",
    )
    token_default_publish: tuple[ChannelPattern, ...] = Field(
        default=(),
        description="channel patterns a token without a publish claim may publish to; empty: none",
    )
    token_max_ttl: int = Field(
        default=86400,
        ge=10,
        le=30 * 86400,
        description="longest lifetime (exp - iat) of a token the service accepts, in seconds; "
        "also how long a rotated-out signing key stays accepted",
    )
    token_clock_skew: int = Field(
        default=5,
        ge=0,
        le=300,
        description="seconds a token's nbf or iat may lie in the future (the issuer's clock "
        "ahead of the worker's); exp is kept to the second: an open connection whose token "
        "expires is closed (4001) unless the client sent a fresher one (refresh)",
    )
    max_message_bytes: int = Field(
        default=65536,
        ge=128,
        le=16 * 2**20,
        description="largest message a client may send (close 1009)",
    )
    max_publish_bytes: int = Field(
        default=16384,
        ge=64,
        le=16 * 2**20,
        description="largest published message as stored, its envelope included (an error "
        "answers a larger one); at most history_max_bytes; max_message_bytes bounds it too",
    )
    messages_per_second: int = Field(
        default=50, ge=1, le=100_000, description="messages a client may send per second"
    )
    send_buffer_bytes: int = Field(
        default=2**20,
        ge=4096,
        le=256 * 2**20,
        description="bytes waiting to be sent to a client too slow to read them before it is "
        "closed (1008)",
    )
    ping_interval: int = Field(
        default=20, ge=1, le=3600, description="seconds between keepalive pings"
    )
    ping_timeout: int = Field(
        default=20, ge=1, le=3600, description="seconds without a pong before a peer is dropped"
    )
    heartbeat_interval: int = Field(
        default=5,
        ge=1,
        le=300,
        description="seconds after which a client that was sent nothing gets a heartbeat "
        "frame; clients reconnect after this plus 5 s of silence (a dead path, a master gone)",
    )
    history_size: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="messages kept per channel for clients that reconnect with since",
    )
    history_max_bytes: int = Field(
        default=512 * 2**10,
        ge=1024,
        le=256 * 2**20,
        description="bytes of messages kept per channel: the oldest go first past it or "
        "history_size; at most send_buffer_bytes, so that a recovery fits a client's buffer",
    )
    history_channels: int = Field(
        default=200,
        ge=1,
        le=10_000_000,
        description="most channels with history at once: a publish that would start one more "
        "is refused (sizes redis_maxmemory)",
    )
    history_channels_per_subject: int = Field(
        default=50,
        ge=1,
        le=10_000_000,
        description="most channels with history one token subject may have started and not "
        "yet seen expire",
    )
    publish_ids_per_subject: int = Field(
        default=50_000,
        ge=1,
        le=10_000_000,
        description="most publish ids one token subject may have awaiting expiry (each is "
        "remembered history_ttl); a publish with one more is refused",
    )
    publish_ids: int = Field(
        default=50_000,
        ge=1,
        le=100_000_000,
        description="most publish ids every subject together may have awaiting expiry (Redis "
        "memory: the deploy counts them against redis_maxmemory); a publish with one more is "
        "refused",
    )
    connections_per_subject: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="most WebSockets one token subject may hold on one service process "
        "(refused with close 4029)",
    )
    history_ttl: int = Field(
        default=300,
        ge=1,
        le=7 * 86400,
        description="seconds a channel's history is kept after its last message",
    )
    drain_seconds: int = Field(
        default=10,
        ge=1,
        le=600,
        description="a drained instance closes its clients (1012) evenly over this many seconds",
    )

    @field_validator(
        "allowed_origins", "token_default_subscribe", "token_default_publish", mode="before"
    )
    @classmethod
    def _list_from_text(cls, value: Any) -> Any:
        return _comma_list(value)

    @model_validator(mode="after")
    def _bounds_fit(self) -> ClientPolicy:
        if self.max_publish_bytes > self.history_max_bytes:
            raise ValueError(
                f"setting max_publish_bytes={self.max_publish_bytes} exceeds history_max_bytes="
                f"{self.history_max_bytes}: one message would not fit a channel's history; "
                "lower max_publish_bytes or raise history_max_bytes"
            )
        if self.history_max_bytes > self.send_buffer_bytes:
            raise ValueError(
                f"setting history_max_bytes={self.history_max_bytes} exceeds send_buffer_bytes="
                f"{self.send_buffer_bytes}: a client recovering a full history would overflow "
                "its buffer; lower history_max_bytes or raise send_buffer_bytes"
            )
        return self


def _secret(value: SecretStr) -> SecretStr:
    if len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes")
    return value


def _previous_secret(value: SecretStr) -> SecretStr:
    return _secret(value) if value.get_secret_value() else value


def _redis_url(value: str) -> str:
    if value and urlsplit(value).scheme not in ("redis", "rediss"):
        raise ValueError("must be a redis:// or rediss:// URL, or empty to run without Redis")
    return value


def _sentinel(value: str) -> str:
    host, _, port = value.strip().rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("each Sentinel is host:port")
    return value.strip()


Sentinel = Annotated[str, AfterValidator(_sentinel)]


class ServiceConfig(ClientPolicy):
    """Everything one service process needs."""

    jwt_secret: Annotated[SecretStr, AfterValidator(_secret)] = Field(
        description="HS256 key that signs client tokens (required)"
    )
    jwt_previous_secret: Annotated[SecretStr, AfterValidator(_previous_secret)] = Field(
        default=SecretStr(""),
        description="the signing key before the last rotation, accepted until it is dropped",
    )
    jwt_previous_until: int = Field(
        default=0,
        ge=0,
        description="Unix time at which the previous signing key stops being accepted, with "
        "no deploy needed; 0: while it is set",
    )
    internal_key: SecretStr = Field(
        default=SecretStr(""),
        description="key the master's rebalancer presents to /internal/shed; empty: refused",
    )
    canary_key: SecretStr = Field(
        default=SecretStr(""),
        description="key the masters' canaries sign their tokens with; such a token may use "
        "the wssfleet.canary.* channels only. Empty: no canary token is accepted",
    )
    tls_certificate_file: str = Field(
        default="",
        description="PEM certificate this process serves TLS with (the deployment's internal "
        "CA signs it); empty: plain HTTP, for a private network",
    )
    tls_key_file: str = Field(default="", description="the key of tls_certificate_file")
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port of this process")
    bind: str = Field(default="127.0.0.1", description="address to listen on")
    worker_name: str = Field(
        default="", description="label sent in the welcome message (host:port)"
    )
    redis_url: Annotated[str, AfterValidator(_redis_url)] = Field(
        default="", description="redis:// URL of the pub/sub bus; empty: this process only"
    )
    redis_sentinels: tuple[Sentinel, ...] = Field(
        default=(),
        description="host:port of each Redis Sentinel, comma-separated: the primary is found "
        "through them and followed through a failover (redis_url gives the user, password, "
        "database and TLS); empty: redis_url's host is the one Redis",
    )
    redis_sentinel_password: str = Field(
        default="",
        description="the password the Sentinels ask for; empty: none",
    )
    redis_sentinel_user: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9_.-]{0,64}$",
        description="the Sentinel user that password is for (an ACL user that may only ask "
        "where the primary is); empty: the Sentinels' default user",
    )
    redis_primary_name: str = Field(
        default="wssfleet",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="the name the Sentinels monitor the primary by",
    )
    redis_replica_wait_ms: int = Field(
        default=1000,
        ge=10,
        le=1500,
        description="while a replica is connected, how long a publish with an id waits for it "
        "to confirm the message before the publisher hears 'not confirmed' (and sends it "
        "again, same id)",
    )
    metrics_port_offset: int = Field(
        default=0,
        ge=-65535,
        le=65535,
        description="the metrics port is the service port plus this; 0: no metrics listener",
    )
    shutdown_timeout: float = Field(
        default=10.0, ge=0.1, le=300, description="seconds to close every client on SIGTERM"
    )

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _sentinels_from_text(cls, value: Any) -> Any:
        return _comma_list(value)

    @property
    def metrics_port(self) -> int | None:
        return self.port + self.metrics_port_offset if self.metrics_port_offset else None

    @model_validator(mode="after")
    def _metrics_port_fits(self) -> ServiceConfig:
        if self.metrics_port is not None and not 1 <= self.metrics_port <= 65535:
            raise ValueError(
                f"WSSFLEET_METRICS_PORT_OFFSET={self.metrics_port_offset} puts the metrics port "
                f"of port {self.port} outside 1-65535"
            )
        return self

    @property
    def worker_label(self) -> str:
        return self.worker_name or f"{socket.gethostname()}:{self.port}"

    def environment(self, exclude: frozenset[str] = frozenset()) -> dict[str, str]:
        """The variables that make ``load()`` return this config again."""
        values: dict[str, str] = {}
        for name in type(self).model_fields:
            if name in exclude:
                continue
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, tuple):
                value = ",".join(value)
            values[PREFIX + name.upper()] = str(value)
        return values


def variable_names() -> list[str]:
    return [PREFIX + name.upper() for name in ServiceConfig.model_fields]


def load(environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """Read the config from the environment; ConfigError names the first bad variable."""
    environ = os.environ if environ is None else environ
    known = set(variable_names())
    unknown = sorted(key for key in environ if key.startswith(PREFIX) and key not in known)
    if unknown:
        raise ConfigError(
            f"unknown variable {unknown[0]}: known ones are {', '.join(sorted(known))}"
        )
    raw = {
        key[len(PREFIX) :].lower(): value.strip() for key, value in environ.items() if key in known
    }
    try:
        return ServiceConfig.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        if not first["loc"]:
            raise ConfigError(first["msg"].removeprefix("Value error, ")) from None
        field = str(first["loc"][0])
        name = PREFIX + field.upper()
        if first["type"] == "missing":
            raise ConfigError(f"{name} is not set: {_doc(field)}") from None
        message = first["msg"].removeprefix("Value error, ")
        # The value is never printed: it may be a key or a URL with a password in it.
        raise ConfigError(f"{name} is invalid: {message} ({_doc(field)})") from None


def _doc(field: str) -> str:
    return ServiceConfig.model_fields[field].description or field
