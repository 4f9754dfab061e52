"""What every host needs before its role: a fresh package index and the common tools."""

from pyinfra.api import deploy
from pyinfra.operations import apt

COMMON_PACKAGES = ["ca-certificates", "nftables", "python3"]


@deploy("Base system")
def apply() -> None:
    """Refresh the package index (at most daily) and install the common packages."""
    apt.update(name="Ensure the apt package index is fresh", cache_time=24 * 3600)
    apt.packages(
        name="Ensure common packages are installed", packages=COMMON_PACKAGES, no_recommends=True
    )
