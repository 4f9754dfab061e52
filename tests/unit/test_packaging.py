"""How the two packages install: the control side needs none of the server's dependencies
(it imports the service's settings model, tokens and Redis functions only), every third-party
module it imports is declared, and run from anywhere but its checkout it says so in one line."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib

from tests.unit.helpers import inherited_environment
from wssfleet_control.checkout import REPO

# Imported by the control side, the roles, the deploy and the lab, and the distribution that
# provides each (where the names differ).
PROVIDED_BY = {"pyinfra_cli": "pyinfra", "wssfleet": "wssfleet"}
CONTROL_SOURCES = ["wssfleet_control", "roles", "lab", "deploy.py", "inventory"]
# The helpers run on the hosts, beside layout.py: standard library only.
HOST_SIDE = REPO / "wssfleet_control" / "hostside"

BLOCK_SERVER = """
import importlib.abc, sys
SERVER = {"picows", "uvloop", "redis", "orjson", "prometheus_client", "multidict", "hiredis"}
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in SERVER:
            raise ImportError(f"{name} is the server's, not the control side's")
sys.meta_path.insert(0, Missing())
import wssfleet_control.cli, wssfleet_control.settings, wssfleet_control.engine, deploy
"""


def test_the_control_side_runs_without_the_servers_dependencies():
    project = tomllib.loads((REPO / "service" / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == ["pydantic==2.14.3"]
    assert "picows==2.3.1" in project["optional-dependencies"]["server"]
    # deploy.py refuses to load outside a deploy, after its imports: that is the import done.
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_SERVER],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=inherited_environment(),
        timeout=60,
    )
    assert "the server's, not the control side's" not in result.stderr, result.stderr
    assert "wssfleet deploy` (make deploy) or `wssfleet plan`" in result.stderr, result.stderr


def imported_modules(paths: list[str]) -> set[str]:
    """The top-level modules the Python files under ``paths`` import (not relative ones)."""
    found = set()
    for path in paths:
        root = REPO / path
        for source in [root] if root.is_file() else root.rglob("*.py"):
            if HOST_SIDE in source.parents:
                continue
            for node in ast.walk(ast.parse(source.read_text())):
                if isinstance(node, ast.Import):
                    found |= {alias.name.partition(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found.add(node.module.partition(".")[0])
    return found


def test_every_third_party_module_the_control_side_imports_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {
        requirement.split("==")[0].split("[")[0].replace("-", "_").lower()
        for requirement in project["dependencies"]
    }
    ours = {"wssfleet_control", "roles", "lab", "deploy", "inventory", "__future__"}
    third_party = imported_modules(CONTROL_SOURCES) - set(sys.stdlib_module_names) - ours
    missing = {
        module for module in third_party if PROVIDED_BY.get(module, module).lower() not in declared
    }
    assert missing == set(), f"imported but not declared in pyproject.toml: {sorted(missing)}"


def test_the_host_side_helpers_import_the_standard_library_only():
    host_side = {"layout", "haproxy_runtime", "instances", "rebalancer", "certificate_sync"}
    imported = imported_modules([str(HOST_SIDE.relative_to(REPO))]) - {"__future__"}
    assert imported - set(sys.stdlib_module_names) - host_side == set()


def test_outside_its_checkout_the_cli_says_how_to_install_it_in_one_line(tmp_path):
    program = (
        "import pathlib, sys\n"
        "from wssfleet_control import checkout\n"
        f"checkout.DEPLOY_FILE = pathlib.Path({str(tmp_path / 'deploy.py')!r})\n"
        "from wssfleet_control.cli import main\n"
        "main(['status'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=inherited_environment(),
        timeout=60,
    )
    assert result.returncode == 1, result
    assert result.stderr.strip().splitlines() == [
        "Error: wssfleet runs from its git checkout (the deploy, roles and templates are "
        "there, not in the package): clone it and install it with `pip install -e .` there "
        "(`make tools` does)"
    ]
