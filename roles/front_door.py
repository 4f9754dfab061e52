"""The front door with several masters: keepalived moves one floating address (the
`front_door_address` the domain resolves to) to a healthy master, over unicast VRRP between
the masters. Without that setting (DNS mode) every master's own address is in DNS and
clients fail over between them: nothing runs here then."""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files

from roles import daemon_running, helper_installed, secret_template
from wssfleet_control.deployment import DeployRun
from wssfleet_control.facts import InterfaceOf
from wssfleet_control.hostside.layout import HELPERS, RUNTIME_HELPER, TEXTFILE_DIRECTORY
from wssfleet_control.settings import SettingsError, seconds_of

CONFIG = "/etc/keepalived/keepalived.conf"
NOTIFY_SCRIPT = f"{HELPERS}/front-door-state"


@deploy("Front door")
def apply(run: DeployRun) -> None:
    """keepalived on this master, holding the front door when it is the healthy choice.

    + run: the deploy: the masters, front_door_address, front_door_router_id and
      front_door_advert_interval
    """
    fleet = run.fleet
    node = fleet.node(host.name)
    interface = host.get_fact(InterfaceOf, address=node.address)
    if not interface and not run.dry:
        raise SettingsError(
            f"{host.name}: no interface holds its address {node.address}, so keepalived cannot "
            "announce the front door there: give the host's private_address"
        )
    apt.packages(name="Ensure keepalived is installed", packages=["keepalived"], no_recommends=True)
    # What `wssfleet front-door move` runs here (a planned move nobody notices).
    helper_installed("front_door_handover.py")
    notify = files.template(
        name="Ensure keepalived records who holds the front door (for Prometheus)",
        src=run.template("front_door", "front-door-state.j2"),
        dest=NOTIFY_SCRIPT,
        mode="755",
        textfile_directory=TEXTFILE_DIRECTORY,
    )
    # What it writes is node_exporter's to read: earlier releases' script left it 0600.
    files.file(
        name="Ensure node_exporter may read who holds the front door",
        path=f"{TEXTFILE_DIRECTORY}/wssfleet_front_door.prom",
        mode="644",
        user="root",
        group="root",
    )
    index = [master.name for master in fleet.masters].index(host.name)
    config = secret_template(
        name="Ensure keepalived's front door config is current (contents withheld: secrets)",
        src=run.template("front_door", "keepalived.conf.j2"),
        dest=CONFIG,
        user="root",
        group="root",
        mode="600",
        host_name=host.name,
        address=fleet.front_door,
        address_with_prefix=fleet.settings.front_door_address,
        interface=interface or "(found at deploy)",
        router_id=fleet.settings.front_door_router_id,
        # A first deploy gives the address to the first master; later, nopreempt keeps it
        # where it is.
        priority=150 - index,
        own_address=node.address,
        peers=[master.address for master in fleet.masters if master.name != host.name],
        advert_interval=f"{seconds_of(fleet.settings.front_door_advert_interval):g}",
        runtime=RUNTIME_HELPER,
        notify=NOTIFY_SCRIPT,
    )
    daemon_running(
        name="Ensure keepalived is running and enabled",
        service="keepalived.service",
        enabled=True,
        reloaded=config.will_change or notify.will_change,
    )
