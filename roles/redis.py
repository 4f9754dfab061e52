"""Redis, the message plane: pub/sub between workers and each channel's history, kept in an
append-only file; private address, password."""

import hashlib
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd

from roles import internal_tls as internal_tls_role
from roles import secret_template
from wssfleet.redis_functions import LIBRARY, LIBRARY_VERSION
from wssfleet_control.deployment import DeployRun
from wssfleet_control.facts import Lines
from wssfleet_control.hostside import layout
from wssfleet_control.inventory import WORKER_REDIS_USER

ADMIN_REDIS_USER = "wssfleet-admin"
MONITOR_REDIS_USER = "wssfleet-monitor"
# The message plane's functions, and the operator's password that loads them (root's only:
# redis-cli reads it from REDISCLI_AUTH, so it is never on a command line).
FUNCTIONS_FILE = "/etc/redis/wssfleet-functions.lua"
ADMIN_AUTH_FILE = "/etc/redis/wssfleet-admin.auth"
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
    # Which replicas the primary has (a publish with an id waits for one), and its role.
    "role",
    "wait",
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
        run, fleet.redis.name, layout.REDIS_TLS_DIRECTORY, "redis", "redis"
    )
    config = files.template(
        name="Ensure redis.conf binds privately and gives each user only what it needs",
        src=run.template("redis", "redis.conf.j2"),
        dest="/etc/redis/redis.conf",
        user="redis",
        group="redis",
        mode="640",
        settings=fleet.settings,
        address=fleet.redis.address,
        users=acl_users(
            run.secrets["redis_password"], admin_password, run.secrets["redis_monitor_password"]
        ),
        tls_directory=layout.REDIS_TLS_DIRECTORY if tls else "",
    )
    # Redis has no reload: a config change needs a restart (workers reconnect by themselves).
    systemd.service(
        name="Ensure redis-server is running and enabled",
        service="redis-server.service",
        running=True,
        enabled=True,
        restarted=config.will_change or tls_changed,
    )
    _functions(run, admin_password)


def _functions(run: DeployRun, admin_password: str) -> None:
    """The message plane's functions, loaded by the operator's user: the workers may call
    them and run nothing else. Kept across restarts in the append-only file; loaded again
    when the version Redis reports is not this release's."""
    secret_template(
        name="Ensure the operator's Redis password file is current (contents withheld)",
        src=run.template("redis", "admin.auth.j2"),
        dest=ADMIN_AUTH_FILE,
        user="root",
        group="root",
        mode="600",
        password=admin_password,
    )
    files.put(
        name="Ensure the message plane's Redis functions are on the host",
        src=StringIO(LIBRARY),
        dest=FUNCTIONS_FILE,
        user="root",
        group="root",
        mode="644",
    )
    # Bounded: while a deploy turns internal_tls on or off, Redis still speaks the other way
    # when this is first asked, and a TLS client facing a plain server waits for ever.
    cli = (
        f'REDISCLI_AUTH="$(cat {ADMIN_AUTH_FILE} 2>/dev/null)" timeout 10 redis-cli '
        f"--no-auth-warning --user {ADMIN_REDIS_USER} -h 127.0.0.1 "
        f"-p {run.fleet.settings.redis_port}"
    )
    if run.fleet.settings.internal_tls:
        cli += f" --tls --cacert {layout.REDIS_TLS_DIRECTORY}/ca.pem"
    loaded = host.get_fact(Lines, command=f"{cli} FCALL_RO wssfleet_version 0")
    if loaded != [LIBRARY_VERSION]:
        server.shell(
            name=f"Ensure Redis runs the message plane's functions ({LIBRARY_VERSION})",
            commands=[
                f"{cli} -x FUNCTION LOAD REPLACE < {FUNCTIONS_FILE} | grep -qx wssfleet",
                f'test "$({cli} FCALL_RO wssfleet_version 0)" = {LIBRARY_VERSION}',
            ],
        )
