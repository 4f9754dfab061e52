"""What every host needs before its role: a supported release, a fresh package index and the
common tools."""

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, files

from wssfleet_control import secret_records
from wssfleet_control.checkout import HOSTSIDE
from wssfleet_control.deployment import DeployError, DeployRun
from wssfleet_control.hostside.layout import HELPERS, SECRET_RECORD, STATE

COMMON_PACKAGES = ["ca-certificates", "nftables", "python3"]
# Debian releases wssfleet is tested on (the lab builds both; `make test` deploys each).
SUPPORTED_RELEASES = {13: "Debian 13 (trixie)", 12: "Debian 12 (bookworm)"}


def release() -> int:
    """The host's Debian major release; anything else stops the deploy before any change."""
    distribution = host.get_fact(LinuxDistribution)
    name, major = distribution.get("name"), distribution.get("major")
    if name != "Debian" or major not in SUPPORTED_RELEASES:
        supported = " or ".join(SUPPORTED_RELEASES.values())
        raise DeployError(
            f"host {host.name} runs {name or 'an unknown system'} {major or ''}: wssfleet "
            f"supports {supported}; reinstall it, or remove it from the inventory"
        )
    return major


@deploy("Base system")
def apply(run: DeployRun) -> None:
    """Refresh the package index (at most daily), install the common packages and the host
    contract (hostside/layout.py) every helper reads; record which secrets the host runs
    with (fingerprints: secret_records.py)."""
    apt.update(name="Ensure the apt package index is fresh", cache_time=24 * 3600)
    apt.packages(
        name="Ensure common packages are installed", packages=COMMON_PACKAGES, no_recommends=True
    )
    files.directory(name=f"Ensure {HELPERS} exists", path=HELPERS, mode="755")
    files.put(
        name="Ensure the host contract the helpers read (layout.py) is installed",
        src=str(HOSTSIDE / "layout.py"),
        dest=f"{HELPERS}/layout.py",
        mode="644",
    )
    files.directory(name=f"Ensure {STATE} exists", path=STATE, mode="755")
    files.put(
        name="Ensure the record of the secrets this host runs with is current (fingerprints)",
        src=StringIO(secret_records.record(run.secrets)),
        dest=SECRET_RECORD,
        mode="600",
    )
