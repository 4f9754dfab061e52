"""The deployment's internal CA on a host (setting internal_tls): the CA certificate, and the
host's own certificate and key, in the directory of the service that uses them and readable
by that service alone (wssfleet_control/internal_tls.py makes them)."""

from io import StringIO

from pyinfra.api import deploy
from pyinfra.operations import files

from roles import secret_template
from wssfleet_control import internal_tls
from wssfleet_control.deployment import DeployRun


@deploy("Internal TLS")
def install(run: DeployRun, name: str, directory: str, owner: str, group: str) -> bool:
    """Install ``name``'s certificate and key, and the CA's certificate, in ``directory``;
    True when any of them changes (whoever serves with them restarts).

    + run: the deploy (its secrets hold the CA and every host's certificate)
    + name: the host, as the inventory names it
    + directory: where its service reads them (ca.pem, cert.pem, key.pem)
    + owner, group: the files' owner and group; only the key is not world-readable (640)
    """
    key, certificate = internal_tls.host_material(run.secrets, name)
    files.directory(
        name=f"Ensure {directory} exists", path=directory, user=owner, group=group, mode="755"
    )
    changed = False
    for file_name, content in (
        ("ca.pem", internal_tls.ca_certificate(run.secrets)),
        ("cert.pem", certificate),
    ):
        changed |= files.put(
            name=f"Ensure {directory}/{file_name} is current",
            src=StringIO(content),
            dest=f"{directory}/{file_name}",
            user=owner,
            group=group,
            mode="644",
        ).will_change
    changed |= secret_template(
        name=f"Ensure {directory}/key.pem is current (contents withheld: a key)",
        src=run.template("internal_tls", "key.pem.j2"),
        dest=f"{directory}/key.pem",
        user=owner,
        group=group,
        mode="640",
        key=key,
    ).will_change
    return changed
