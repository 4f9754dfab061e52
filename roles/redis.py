"""Redis, the message plane: pub/sub between workers and each channel's history, kept in an
append-only file; private address, password."""

import hashlib
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server

from roles import daemon_running, helper_installed, secret_template, unit_retired
from roles import internal_tls as internal_tls_role
from wssfleet.redis_functions import LIBRARY, LIBRARY_VERSION
from wssfleet_control.deployment import DeployRun
from wssfleet_control.facts import Lines, SentinelPrimary
from wssfleet_control.hostside import layout
from wssfleet_control.inventory import (
    WORKER_REDIS_USER,
    app_redis_prefix,
    app_redis_secret,
    app_redis_user,
)
from wssfleet_control.settings import seconds_of

ADMIN_REDIS_USER = "wssfleet-admin"
# With several redis hosts (their passwords are in the secrets).
REPLICATION_REDIS_USER = "wssfleet-replica"
SENTINEL_REDIS_USER = "wssfleet-sentinel"
# The Sentinels' own users: the workers' may only ask where the primary is (a worker holds its
# password); the default user, for the other Sentinels and the operator's tools on Sentinel
# hosts, may do everything, and is off to everyone else.
SENTINEL_CLIENT_USER = "wssfleet-worker"
SENTINEL_CLIENT_COMMANDS = ("ping", "sentinel|get-master-addr-by-name")
# The promotion guard's (redis_guard.py): where the primary is, and whether the Sentinels see
# it up; nothing that changes anything.
SENTINEL_GUARD_USER = "wssfleet-guard"
SENTINEL_GUARD_COMMANDS = ("ping", "sentinel|master")
# Root's, on each redis host: the guard's password to the Sentinels.
GUARD_SENTINEL_AUTH_FILE = "/etc/redis/wssfleet-guard-sentinel.auth"
PRIMARY_NAME = layout.REDIS_PRIMARY_NAME
REPLICATION_FILE = layout.REDIS_REPLICATION_FILE
SENTINEL_CONFIG = "/etc/redis/sentinel.conf"
UNIT_OVERRIDE = "/etc/systemd/system/redis-server.service.d/wssfleet.conf"
# How long systemd waits for redis-server to stop before it kills it.
REDIS_STOP_TIMEOUT_SECONDS = 30
SENTINEL_AUTH_FILE = layout.SENTINEL_AUTH_FILE
MONITOR_REDIS_USER = "wssfleet-monitor"
# The message plane's functions, and the operator's password that loads them (root's only:
# redis-cli reads it from REDISCLI_AUTH, so it is never on a command line).
FUNCTIONS_FILE = "/etc/redis/wssfleet-functions.lua"
ADMIN_AUTH_FILE = layout.REDIS_ADMIN_AUTH_FILE
# Everything the message plane does (wssfleet/redis_broker.py and redis_functions.py: Redis checks
# the commands a function calls against the caller's user), and nothing else: no FLUSHDB,
# KEYS, DEL, CLIENT KILL or SHUTDOWN, only wssfleet:* keys and channels, and no code of its
# own (no EVAL, EVALSHA, SCRIPT or FUNCTION): it calls the functions the deploy loaded.
WORKER_COMMANDS = (
    "ping",
    "client|setname",
    "subscribe",
    "unsubscribe",
    "fcall",
    "fcall_ro",
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
    # Whether a server is the primary, and which replicas it has in step (a publish with an
    # id waits for one): that section only, not the server's other facts.
    "role",
    "info|replication",
    "wait",
)


# What redis_exporter runs: INFO and a few read-only introspection commands, on no key. No
# CONFIG GET: it answers masterauth, the replication password (the exporter is told not to
# ask: its -config-command=-; INFO gives maxmemory).
MONITOR_COMMANDS = (
    "ping",
    "client|setname",
    "info",
    "client|list",
    "slowlog|get",
    "slowlog|len",
    "latency|latest",
    "select",
    "memory|stats",
)


def hashed(password: str) -> str:
    """A password as an ACL rule holds it: its SHA-256, so that the config on the host, a diff
    of it and its logs never hold one."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def acl_users(worker_password: str, admin_password: str, monitor_password: str) -> dict[str, str]:
    """Redis's users and their rules."""

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


# What an app's own user may do (settings: apps.NAME.redis): publish and subscribe on its own
# channels only (app_redis_prefix). No key at all: Redis cannot bound one user's share of
# maxmemory, and with noeviction an app that filled it would have the built-in service's
# publishes refused. Nothing that lists or reaches beyond its channels (PUBSUB CHANNELS), no
# scripts or functions (FUNCTION LOAD would replace the fleet's). INFO stays: clients check
# with it that the server they reached is the primary.
APP_RULES = "-@all +@connection +@pubsub -@dangerous -@admin -pubsub +info"


def app_user_rules(name: str, password: str) -> str:
    """The ACL rules of the app ``name``'s own user: its channels, APP_RULES."""
    prefix = app_redis_prefix(name)
    return f"on {hashed(password)} resetkeys resetchannels &{prefix}* {APP_RULES}"


def app_users(fleet, secrets: dict[str, str]) -> dict[str, str]:
    """Each app that asks for Redis: its own user, confined to its own channels."""
    return {
        app_redis_user(name): app_user_rules(name, secrets[app_redis_secret(name)])
        for name, app in sorted(fleet.settings.apps.items())
        if app.redis
    }


@deploy("Redis")
def apply(run: DeployRun) -> None:
    """Install and configure Redis on the fleet's redis host.

    + run: the deploy: the checked inventory (redis_port, redis_maxmemory, the redis address)
      and the secrets (the workers', the operator's and redis_exporter's passwords; with
      internal_tls, Redis's certificate)
    """
    fleet = run.fleet
    admin_password = run.secrets["redis_admin_password"]
    apt.packages(
        name="Ensure redis-server is installed", packages=["redis-server"], no_recommends=True
    )
    tls = fleet.settings.internal_tls
    tls_changed = tls and internal_tls_role.install(
        run, host.name, layout.REDIS_TLS_DIRECTORY, "redis", "redis"
    )
    replicated = len(fleet.redis_nodes) > 1
    users = acl_users(
        run.secrets["redis_password"], admin_password, run.secrets["redis_monitor_password"]
    )
    users |= app_users(fleet, run.secrets)
    if replicated:
        users |= replication_users(
            run.secrets["redis_replication_password"], run.secrets["sentinel_redis_password"]
        )
    primary = _primary(run) if replicated else ""
    files.directory(
        name="Ensure Redis's config directory is root's",
        path=layout.REDIS_CONFIG_DIRECTORY,
        user="root",
        group="redis",
        mode="750",
    )
    # Debian's unit reads /etc/redis/redis.conf, in a directory Redis may write.
    unit = files.put(
        name="Ensure redis-server reads the config wssfleet manages",
        src=StringIO(
            "# Managed by wssfleet (roles/redis.py)\n[Service]\nExecStart=\n"
            f"ExecStart=/usr/bin/redis-server {layout.REDIS_CONFIG} --supervised systemd "
            "--daemonize no\n"
            # Debian's unit waits forever for a stop; Redis ends within shutdown-timeout
            # (10 s for lagging replicas) plus its AOF's fsync, so a hung stop is killed.
            f"TimeoutStopSec={REDIS_STOP_TIMEOUT_SECONDS}s\n"
        ),
        dest=UNIT_OVERRIDE,
        mode="644",
    )
    # Hashes only, but root's: Redis reads it and cannot rewrite it.
    acl = files.template(
        name="Ensure Redis's users give each one only what it needs",
        src=run.template("redis", "users.acl.j2"),
        dest=layout.REDIS_ACL_FILE,
        user="root",
        group="redis",
        mode="640",
        users=users,
    )
    # Root's and secret (the replication password is in it): Redis reads it and cannot
    # rewrite it, so it stays as deployed.
    config = secret_template(
        name="Ensure redis.conf binds privately and gives each user only what it needs",
        src=run.template("redis", "redis.conf.j2"),
        dest=layout.REDIS_CONFIG,
        user="root",
        group="redis",
        mode="640",
        settings=fleet.settings,
        address=fleet.node(host.name).address,
        acl_file=layout.REDIS_ACL_FILE,
        tls_directory=layout.REDIS_TLS_DIRECTORY if tls else "",
        replication_file=REPLICATION_FILE if replicated else "",
        replication_user=REPLICATION_REDIS_USER,
        replication_password=run.secrets["redis_replication_password"],
    )
    if replicated:
        # Read at the next start only: the running server already follows the Sentinels.
        files.put(
            name="Ensure Redis starts as the Sentinels' primary or its replica",
            src=StringIO("" if primary == own_address(run) else f"replicaof {primary}\n"),
            dest=REPLICATION_FILE,
            user="root",
            group="redis",
            mode="640",
        )
    # Redis has no reload: a config change needs a restart (workers reconnect by themselves).
    restarted = config.will_change or tls_changed or unit.will_change
    daemon_running(
        name="Ensure redis-server is running and enabled",
        service="redis-server.service",
        enabled=True,
        daemon_reload=unit.will_change,
        restarted=restarted,
    )
    _password_file(run, "the operator's Redis password file", ADMIN_AUTH_FILE, admin_password)
    if acl.will_change and not restarted:
        # Users alone changed (an app added or removed, a password replaced): loaded live;
        # Redis keeps the old ones if the file is refused, and says why.
        server.shell(
            name="Ensure Redis runs with the users in its ACL file (loaded live)",
            commands=[f"{_admin_cli(run)} ACL LOAD | grep -qx OK"],
        )
    if replicated:
        _promotion_guard(run)
    else:
        unit_retired(layout.REDIS_GUARD_UNIT, "a single redis host: nothing to promote")
    # Functions are loaded on the primary; replicas copy them.
    if not replicated or primary == own_address(run):
        _functions(run)


# How often the promotion guard looks (the Sentinels read a replica's INFO each second while
# the primary is down, every 10 s otherwise).
GUARD_INTERVAL = 0.5


def _promotion_guard(run: DeployRun) -> None:
    """The Sentinels promote only a Redis in step with the primary (redis_guard.py)."""
    fleet = run.fleet
    password_file = _password_file(
        run,
        "the promotion guard's Sentinel password file",
        GUARD_SENTINEL_AUTH_FILE,
        run.secrets["sentinel_guard_password"],
    )
    program = helper_installed("redis_guard.py")
    unit = files.template(
        name="Ensure the Redis promotion guard's unit is current",
        src=run.template("redis", "wssfleet-redis-guard.service.j2"),
        dest=f"/etc/systemd/system/{layout.REDIS_GUARD_UNIT}",
        mode="644",
        program=layout.REDIS_GUARD_HELPER,
        port=fleet.settings.redis_port,
        redis_user=ADMIN_REDIS_USER,
        password_file=ADMIN_AUTH_FILE,
        address=fleet.node(host.name).address,
        primary_name=PRIMARY_NAME,
        sentinel_addresses=[node.address for node in fleet.sentinels],
        sentinel_port=fleet.settings.redis_sentinel_port,
        sentinel_user=SENTINEL_GUARD_USER,
        sentinel_password_file=GUARD_SENTINEL_AUTH_FILE,
        ca_file=f"{layout.REDIS_TLS_DIRECTORY}/ca.pem" if fleet.settings.internal_tls else "",
        interval=GUARD_INTERVAL,
    )
    daemon_running(
        name="Ensure the Redis promotion guard is running and enabled",
        service=layout.REDIS_GUARD_UNIT,
        enabled=True,
        daemon_reload=unit.will_change,
        restarted=program.will_change or unit.will_change or password_file.will_change,
    )


def replication_users(replication_password: str, sentinel_password: str) -> dict[str, str]:
    """With several redis hosts: the user replicas copy the primary as, and the one the
    Sentinels watch and reconfigure Redis as (what Redis's documentation gives each)."""
    return {
        REPLICATION_REDIS_USER: f"on {hashed(replication_password)} +psync +replconf +ping",
        SENTINEL_REDIS_USER: f"on {hashed(sentinel_password)} allchannels +multi +slaveof "
        "+replicaof +ping +exec +subscribe +config|rewrite +role +publish +info "
        "+client|setname +client|kill +script|kill",
    }


def sentinel_users(peer_password: str, client_password: str, guard_password: str) -> dict[str, str]:
    """A Sentinel's users: the default one, for the other Sentinels and the operator's tools
    on Sentinel hosts (its password is on Sentinel hosts only); the workers', which may only
    ask where the primary is; the redis hosts' promotion guard's, which may also ask whether
    the Sentinels see it up. None may run SENTINEL FAILOVER, SET, RESET or REMOVE, ACL or
    CLIENT KILL."""

    def limited(password: str, commands: tuple[str, ...]) -> str:
        allowed = " ".join(f"+{command}" for command in commands)
        return f"on {hashed(password)} resetchannels -@all {allowed}"

    return {
        "default": f"on {hashed(peer_password)} ~* &* +@all",
        SENTINEL_CLIENT_USER: limited(client_password, SENTINEL_CLIENT_COMMANDS),
        SENTINEL_GUARD_USER: limited(guard_password, SENTINEL_GUARD_COMMANDS),
    }


def _primary(run: DeployRun) -> str:
    """Where the primary is ("address port"): the Sentinel here says so once the Sentinels
    run (a failover may have moved it); before that, the first redis host."""
    fleet = run.fleet
    answer = ""
    if "sentinel" in fleet.roles_of(host.name):
        answer = host.get_fact(
            SentinelPrimary,
            port=fleet.settings.redis_sentinel_port,
            primary_name=PRIMARY_NAME,
            password_file=SENTINEL_AUTH_FILE,
            tls=fleet.settings.internal_tls,
        )
    return answer or f"{fleet.redis.address} {fleet.settings.redis_port}"


@deploy("Redis Sentinel")
def sentinel(run: DeployRun) -> None:
    """A Sentinel on this host: with the two others, it watches the primary and promotes a
    replica when a majority see the primary gone.

    + run: the deploy: the redis hosts, redis_sentinel_port, redis_failover_after and the
      Sentinels' passwords (secrets: to Redis, to each other, the workers')
    """
    fleet = run.fleet
    settings = fleet.settings
    apt.packages(
        name="Ensure redis-sentinel is installed", packages=["redis-sentinel"], no_recommends=True
    )
    password = run.secrets["sentinel_peer_password"]
    tls = settings.internal_tls
    tls_changed = tls and internal_tls_role.install(
        run, host.name, layout.REDIS_TLS_DIRECTORY, "redis", "redis"
    )
    _password_file(run, "the Sentinel's password file", SENTINEL_AUTH_FILE, password)
    # The Sentinels rewrite their config as they learn (replicas, each other, a new primary):
    # it is written once, and again only when its recipe changes.
    recipe = _sentinel_recipe(run)
    if host.get_fact(Lines, command=f"sed -n 's/^# wssfleet recipe //p' {SENTINEL_CONFIG}") != [
        recipe
    ]:
        written = secret_template(
            name="Ensure the Sentinel watches the wssfleet primary (contents withheld)",
            src=run.template("redis", "sentinel.conf.j2"),
            dest=SENTINEL_CONFIG,
            user="redis",
            group="redis",
            mode="640",
            recipe=recipe,
            settings=settings,
            address=fleet.node(host.name).address,
            primary=_primary(run),
            primary_name=PRIMARY_NAME,
            quorum=len(fleet.sentinels) // 2 + 1,
            down_after_ms=int(seconds_of(settings.redis_failover_after) * 1000),
            sentinel_user=SENTINEL_REDIS_USER,
            redis_password=run.secrets["sentinel_redis_password"],
            password=password,
            users=sentinel_users(
                password,
                run.secrets["sentinel_client_password"],
                run.secrets["sentinel_guard_password"],
            ),
            tls_directory=layout.REDIS_TLS_DIRECTORY if tls else "",
        )
        restarted = written.will_change
    else:
        restarted = False
    restarted = restarted or tls_changed
    daemon_running(
        name="Ensure redis-sentinel is running and enabled",
        service="redis-sentinel.service",
        enabled=True,
        restarted=restarted,
    )


def sentinel_retired() -> None:
    """On a host that no longer runs a Sentinel (the fleet is back to one redis host, or
    others took its place): stopped, so that it cannot promote a server nobody follows."""
    unit_retired("redis-sentinel.service", "the fleet's Sentinels are elsewhere, or none")


def _sentinel_recipe(run: DeployRun) -> str:
    """What the written Sentinel config depends on, as a short digest: hosts, ports, timing."""
    fleet = run.fleet
    parts = [
        *(node.address for node in fleet.redis_nodes),
        str(fleet.settings.redis_port),
        str(fleet.settings.redis_sentinel_port),
        fleet.settings.redis_failover_after,
        *(
            hashlib.sha256(run.secrets[name].encode()).hexdigest()
            for name in ("sentinel_peer_password", "sentinel_redis_password")
        ),
        hashlib.sha256(" ".join(SENTINEL_CLIENT_COMMANDS).encode()).hexdigest(),
        hashlib.sha256(run.secrets["sentinel_client_password"].encode()).hexdigest(),
        hashlib.sha256(" ".join(SENTINEL_GUARD_COMMANDS).encode()).hexdigest(),
        hashlib.sha256(run.secrets["sentinel_guard_password"].encode()).hexdigest(),
        "tls" if fleet.settings.internal_tls else "plain",
    ]
    return hashlib.sha256(" ".join(parts).encode()).hexdigest()[:16]


def own_address(run: DeployRun) -> str:
    """This redis host as the Sentinels name it: "address port"."""
    return f"{run.fleet.node(host.name).address} {run.fleet.settings.redis_port}"


def _functions(run: DeployRun) -> None:
    """The message plane's functions, loaded by the operator's user: the workers may call
    them and run nothing else. Kept across restarts in the append-only file; loaded again
    when the version Redis reports is not this release's."""
    files.put(
        name="Ensure the message plane's Redis functions are on the host",
        src=StringIO(LIBRARY),
        dest=FUNCTIONS_FILE,
        user="root",
        group="root",
        mode="644",
    )
    cli = _admin_cli(run)
    loaded = host.get_fact(Lines, command=f"{cli} FCALL_RO wssfleet_version 0")
    if loaded != [LIBRARY_VERSION]:
        server.shell(
            name=f"Ensure Redis runs the message plane's functions ({LIBRARY_VERSION})",
            commands=[
                f"{cli} -x FUNCTION LOAD REPLACE < {FUNCTIONS_FILE} | grep -qx wssfleet",
                f'test "$({cli} FCALL_RO wssfleet_version 0)" = {LIBRARY_VERSION}',
            ],
        )


def _admin_cli(run: DeployRun) -> str:
    """redis-cli on this host as the operator's user. Bounded: while a deploy turns
    internal_tls on or off, Redis still speaks the other way when this is first asked, and
    a TLS client facing a plain server waits for ever."""
    cli = (
        f'REDISCLI_AUTH="$(cat {ADMIN_AUTH_FILE} 2>/dev/null)" timeout 10 redis-cli '
        f"--no-auth-warning --user {ADMIN_REDIS_USER} -h 127.0.0.1 "
        f"-p {run.fleet.settings.redis_port}"
    )
    if run.fleet.settings.internal_tls:
        cli += f" --tls --cacert {layout.REDIS_TLS_DIRECTORY}/ca.pem"
    return cli


def _password_file(run: DeployRun, what: str, dest: str, password: str):
    """A password for root's tools (redis-cli, the guard's unit), root's alone."""
    return secret_template(
        name=f"Ensure {what} is current (contents withheld)",
        src=run.template("redis", "admin.auth.j2"),
        dest=dest,
        user="root",
        group="root",
        mode="600",
        password=password,
    )
