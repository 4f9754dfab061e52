"""Several masters serve one certificate: the first master obtains and renews it (certbot),
and after every deploy the newest certificate any master serves is copied to the masters
that serve another, swapped into their HAProxy without a reload. A master that was down when
the certificate was renewed gets it at the next deploy.

The PEM holds the private key: it travels only over the deploy's SSH, through this process's
memory, into a directory only the SSH user can enter, and the helper that installs it
removes it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO

from wssfleet_control import commands
from wssfleet_control.engine import Session
from wssfleet_control.hostside.layout import UPLOADS


@dataclass(frozen=True)
class Served:
    """What one master's HAProxy serves."""

    master: str
    fingerprint: str
    not_before: datetime
    self_signed: bool


def served(session: Session, master: str) -> Served | None:
    """The certificate ``master`` serves; None when it cannot be reached or read."""
    result = session.on(master, commands.certificate_identity(), timeout=30)
    if not result.ok:
        return None
    fields = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return Served(
        master=master,
        fingerprint=fields.get("sha256 Fingerprint", fields.get("SHA256 Fingerprint", "")),
        not_before=datetime.strptime(fields["notBefore"], "%b %d %H:%M:%S %Y %Z"),
        self_signed=fields.get("subject", "").strip() == fields.get("issuer", "").strip(),
    )


def share(session: Session) -> dict[str, str]:
    """Copy the newest CA-issued certificate to every master that serves another; returns
    what happened on each master (its name: "current", "copied from X", or why not)."""
    masters = [master.name for master in session.fleet.masters]
    if len(masters) < 2:
        return {}
    seen = {name: served(session, name) for name in masters}
    issued = [entry for entry in seen.values() if entry and not entry.self_signed]
    if not issued:
        return dict.fromkeys(masters, "no master serves a CA-issued certificate yet")
    # The one issued last, even when it ends sooner (a move to a shorter-lived profile).
    newest = max(issued, key=lambda entry: (entry.not_before, entry.master == masters[0]))
    pem = session.on(newest.master, commands.served_pem(), timeout=30)
    outcome: dict[str, str] = {}
    for name, entry in seen.items():
        if entry is None:
            outcome[name] = "unreachable: it gets the certificate at its next deploy"
        elif entry.fingerprint == newest.fingerprint:
            outcome[name] = "current"
        elif not pem.ok:
            outcome[name] = f"not copied: {newest.master}'s certificate could not be read"
        else:
            outcome[name] = _install(session, name, pem.stdout, newest.master)
    return outcome


def _install(session: Session, master: str, pem: str, source: str) -> str:
    node = session.fleet.node(master)
    login = node.ssh_options.get("ssh_user", "root")
    prepared = session.on(master, f"install -d -m 700 -o {commands.quote(login)} {UPLOADS}")
    staged = f"{UPLOADS}/certificate-{hashlib.sha256(pem.encode()).hexdigest()[:16]}.pem"
    # As the login user, straight into the private directory (no world-readable /tmp copy).
    if not prepared.ok or not session.host(master).put_file(BytesIO(pem.encode()), staged):
        return f"not copied: uploading to {master} failed"
    # Checked on the master as its certificate sync checks what it fetches: the same key,
    # a chain to the trusted roots for every domain, issued later than its own.
    domains = list(session.fleet.settings.domains)
    installed = session.on(
        master, commands.install_shared_pem(staged, f"master {source}", domains), timeout=60
    )
    if not installed.ok:
        return f"not installed: {installed.stderr.strip() or installed.stdout.strip()}"
    return f"copied from {source}"
