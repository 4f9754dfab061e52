"""Redis, the message plane: pub/sub between workers and each channel's history, kept in an
append-only file; private address, password."""

from pyinfra.api import deploy
from pyinfra.operations import apt, files, systemd

from roles import template
from wssfleet_control.inventory import Fleet


@deploy("Redis")
def apply(fleet: Fleet, password: str) -> None:
    """Install and configure Redis on the fleet's redis host.

    + fleet: the checked inventory (redis_port, redis_maxmemory, the redis address)
    + password: the deployment's Redis password
    """
    apt.packages(
        name="Ensure redis-server is installed", packages=["redis-server"], no_recommends=True
    )
    config = files.template(
        name="Ensure redis.conf binds privately and requires the password",
        src=template("redis", "redis.conf.j2"),
        dest="/etc/redis/redis.conf",
        user="redis",
        group="redis",
        mode="640",
        settings=fleet.settings,
        address=fleet.redis.address,
        password=password,
    )
    # Redis has no reload: a config change needs a restart (workers reconnect by themselves).
    systemd.service(
        name="Ensure redis-server is running and enabled",
        service="redis-server.service",
        running=True,
        enabled=True,
        restarted=config.will_change,
    )
