"""Where things are in this checkout: the one place that knows the repository's root."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEPLOY_FILE = REPO / "deploy.py"
TEMPLATES = REPO / "templates"
INVENTORIES = REPO / "inventory"
LAB_INVENTORY = INVENTORIES / "lab.py"
# Names the operator's deployment once for this checkout (`inventory = "inventory/prod.py"`),
# as Kamal's config/deploy.yml does.
PROJECT_FILE = REPO / "wssfleet.toml"
SERVICE = REPO / "service"
# The host-side helpers (stdlib-only scripts) the roles install into layout.HELPERS.
HOSTSIDE = REPO / "wssfleet_control" / "hostside"
# Everything built or downloaded: wheels, Pebble, SSH configs. Not in git.
BUILD = REPO / "build"
# The lab's state: its hosts' keys, addresses and the ACME root. Not in git.
LAB_STATE = REPO / ".lab"


def is_checkout() -> bool:
    """Whether this package runs from its checkout: the deploy, the roles' templates and the
    inventories live beside it, not in the package (an editable install keeps them there)."""
    return DEPLOY_FILE.is_file() and TEMPLATES.is_dir() and (REPO / "roles").is_dir()


NOT_A_CHECKOUT = (
    "wssfleet runs from its git checkout (the deploy, roles and templates are there, not in "
    "the package): clone it and install it with `pip install -e .` there (`make tools` does)"
)
