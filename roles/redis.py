"""Redis, the message plane: pub/sub between workers and each channel's history, kept in an
append-only file; private address, password."""

import hashlib

from pyinfra.api import deploy
from pyinfra.operations import apt, files, systemd

from roles import template
from wssfleet_control.inventory import WORKER_REDIS_USER, Fleet

ADMIN_REDIS_USER = "wssfleet-admin"
MONITOR_REDIS_USER = "wssfleet-monitor"
# Everything the message plane does (wssfleet/broker.py, its Lua scripts included: Redis
# checks the commands a script calls against the caller's user), and nothing else: no
# FLUSHDB, KEYS, DEL, CLIENT KILL or SHUTDOWN, and only wssfleet:* keys and channels.
WORKER_COMMANDS = (
    "ping",
    "client|setname",
    "subscribe",
    "unsubscribe",
    "evalsha",
    "script|load",
    "get",
    "set",
    "exists",
    "expire",
    "pexpire",
    "pttl",
    "time",
    "hget",
    "hmget",
    "hset",
    "xadd",
    "xlen",
    "xrange",
    "xinfo|stream",
    "zadd",
    "zcard",
    "zrangebyscore",
    "zrem",
    "zremrangebyscore",
    "publish",
)


# What redis_exporter runs: INFO and a few read-only introspection commands, on no key.
MONITOR_COMMANDS = (
    "ping",
    "client|setname",
    "info",
    "config|get",
    "client|list",
    "slowlog|get",
    "slowlog|len",
    "latency|latest",
    "select",
    "memory|stats",
)


def acl_users(worker_password: str, admin_password: str, monitor_password: str) -> dict[str, str]:
    """Redis's users and their rules. Passwords appear only as SHA-256 hashes, so the config
    on the host, a diff of it and its logs never hold one."""

    def hashed(password: str) -> str:
        return "#" + hashlib.sha256(password.encode()).hexdigest()

    allowed = " ".join(f"+{command}" for command in WORKER_COMMANDS)
    return {
        # Nobody connects without a name: the default user is off. Its permissions stay whole
        # because Redis 7.0 checks the transactions it replays from the append-only file
        # against them (with -@all it drops every stored script's effects at start).
        "default": "off resetpass ~* &* +@all",
        WORKER_REDIS_USER: f"on {hashed(worker_password)} resetkeys resetchannels "
        f"~wssfleet:* &wssfleet:* -@all {allowed}",
        # For the operator and wssfleet's own checks (make verify): everything.
        ADMIN_REDIS_USER: f"on {hashed(admin_password)} ~* &* +@all",
        # For redis_exporter (roles/monitoring.py): introspection, no key, no channel.
        MONITOR_REDIS_USER: f"on {hashed(monitor_password)} resetkeys resetchannels -@all "
        + " ".join(f"+{command}" for command in MONITOR_COMMANDS),
    }


@deploy("Redis")
def apply(fleet: Fleet, password: str, admin_password: str, monitor_password: str) -> None:
    """Install and configure Redis on the fleet's redis host.

    + fleet: the checked inventory (redis_port, redis_maxmemory, the redis address)
    + password: the workers' Redis password
    + admin_password: the operator's Redis password (user wssfleet-admin)
    + monitor_password: redis_exporter's password (user wssfleet-monitor)
    """
    apt.packages(
        name="Ensure redis-server is installed", packages=["redis-server"], no_recommends=True
    )
    config = files.template(
        name="Ensure redis.conf binds privately and gives each user only what it needs",
        src=template("redis", "redis.conf.j2"),
        dest="/etc/redis/redis.conf",
        user="redis",
        group="redis",
        mode="640",
        settings=fleet.settings,
        address=fleet.redis.address,
        users=acl_users(password, admin_password, monitor_password),
    )
    # Redis has no reload: a config change needs a restart (workers reconnect by themselves).
    systemd.service(
        name="Ensure redis-server is running and enabled",
        service="redis-server.service",
        running=True,
        enabled=True,
        restarted=config.will_change,
    )
