"""A deploy to one's own servers installs nothing for the lab: `make deploy` with an inventory
that is not the lab's never runs `make tools` (the lab's and the tests' Debian packages,
Pebble, promtool), while the lab's deploy does. `make -n` prints the recipes make would run;
the tools' stamps are pointed at files that do not exist, so their recipes show whenever make
would run them."""

from __future__ import annotations

import subprocess

from tests.unit.helpers import inherited_environment
from wssfleet_control.checkout import REPO

ABSENT_STAMPS = [
    "HOST_STAMP=build/.absent-host-packages",
    "PROMTOOL=build/.absent-promtool",
    "PEBBLE=build/.absent-pebble",
]


def planned_deploy(inventory: str) -> str:
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", "deploy", f"INVENTORY={inventory}", *ABSENT_STAMPS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=inherited_environment(),
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_deploy_to_real_servers_installs_none_of_the_labs_tools():
    real = planned_deploy("inventory/production.example.py")
    assert "wssfleet deploy -i inventory/production.example.py" in real
    for tool in ("apt-get", "dpkg-query", "Pebble", "promtool"):
        assert tool not in real, f"a deploy to real servers would run {tool}:\n{real}"
    # The same plan for the lab installs them: the check above can fail.
    lab = planned_deploy("inventory/lab.py")
    assert "apt-get" in lab and "Pebble" in lab and "promtool" in lab, lab
