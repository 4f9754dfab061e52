"""`wssfleet check --hosts`: what a deploy needs of the hosts, looked at before it touches any.
Each host: SSH answers with the inventory's key, root or sudo without a password works, it
runs Debian 12 or 13. The fleet: every domain resolves to the masters (or their front door),
and with several masters each reaches the others' port 80, where they pass ACME challenges
to the master that asked. Read only: nothing on a host changes."""

from __future__ import annotations

import contextlib
import json
import socket
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from roles.base import SUPPORTED_RELEASES
from wssfleet_control import commands
from wssfleet_control.status import COULD_NOT_LOOK

if TYPE_CHECKING:
    from wssfleet_control.engine import Session

OK, PROBLEM, WARNING = "ok", "problem", "warning"


@dataclass
class Finding:
    subject: str  # a host's name, or the domain
    check: str
    outcome: str  # OK, PROBLEM or WARNING (a thing the deploy may not need, or cannot see)
    detail: str


def look(session: Session) -> list[Finding]:
    """Every finding, hosts in inventory order, then the domains and the masters' port 80."""
    fleet = session.fleet
    session.connect(every_host=False)
    found: list[Finding] = []
    for node in fleet.nodes:
        if node.name in session.unreachable:
            found.append(Finding(node.name, "ssh", PROBLEM, session.unreachable_because(node.name)))
            continue
        found.append(
            Finding(
                node.name,
                "ssh",
                OK,
                f"answers as {node.data.get('ssh_user') or 'the default user'}",
            )
        )
        found += _root(session, node)
    found += _domains(session)
    found += _port_80_between_masters(session)
    return found


def _root(session: Session, node) -> list[Finding]:
    """Root (or sudo without a password) and the Debian release."""
    who = session.on(node.name, "id -u")
    if not who.ok or who.stdout.strip() != "0":
        said = (who.stderr or who.stdout).strip().splitlines()[-1:] or ["not root"]
        fix = "" if node.data.get("_sudo") else "; a non-root ssh_user needs _sudo: True"
        return [Finding(node.name, "root", PROBLEM, f"{said[0]}{fix}")]
    sudo = "through sudo" if node.data.get("_sudo") else "as root"
    findings = [Finding(node.name, "root", OK, f"commands run {sudo}")]
    release = session.on(node.name, "cat /etc/os-release")
    fields = dict(line.split("=", 1) for line in release.stdout.splitlines() if "=" in line)
    name, version = fields.get("ID", "").strip('"'), fields.get("VERSION_ID", "").strip('"')
    major = int(version) if version.isdigit() else 0
    if name == "debian" and major in SUPPORTED_RELEASES:
        findings.append(Finding(node.name, "debian", OK, SUPPORTED_RELEASES[major]))
    else:
        pretty = fields.get("PRETTY_NAME", "an unknown system").strip('"')
        findings.append(
            Finding(node.name, "debian", PROBLEM, f"{pretty}: wssfleet deploys Debian 12 or 13")
        )
    return findings


def _domains(session: Session) -> list[Finding]:
    """Each domain's addresses as this machine resolves them, against the masters' (or the
    front door's). Seen from here only: a warning, never a problem, when they differ or the
    name does not resolve (split DNS, a record not published yet)."""
    fleet = session.fleet
    door = fleet.settings.front_door_address
    wanted = (
        {door.split("/")[0]}
        if door
        else {address for master in fleet.masters for address in _addresses_of(master)}
    )
    where = "the front door" if door else "the masters"
    found = []
    for name in fleet.settings.domains:
        # A wildcard's names are the clients' to pick: one label stands for them.
        domain = name.replace("*", "wildcard-check", 1) if name.startswith("*.") else name
        try:
            resolved = {
                info[4][0] for info in socket.getaddrinfo(domain, 443, proto=socket.IPPROTO_TCP)
            }
        except OSError as error:
            found.append(
                Finding(name, "dns", WARNING, f"does not resolve from here ({error.strerror})")
            )
            continue
        if resolved & wanted:
            found.append(
                Finding(name, "dns", OK, f"resolves to {where} ({', '.join(sorted(resolved))})")
            )
        else:
            found.append(
                Finding(
                    name,
                    "dns",
                    WARNING,
                    f"resolves to {', '.join(sorted(resolved))} from here, not to {where} "
                    f"({', '.join(sorted(wanted))}): Let's Encrypt will not reach the masters",
                )
            )
    return found


def _addresses_of(node) -> set[str]:
    addresses = {node.address}
    hostname = node.data.get("ssh_hostname")
    if hostname:
        with contextlib.suppress(OSError):  # the control machine's own resolver
            addresses |= {info[4][0] for info in socket.getaddrinfo(hostname, 22)}
    return addresses


def _port_80_between_masters(session: Session) -> list[Finding]:
    fleet = session.fleet
    found = []
    for master in fleet.masters:
        if master.name in session.unreachable:
            continue
        for other in fleet.masters:
            if other.name == master.name:
                continue
            answer = session.on(master.name, commands.can_connect(other.address, 80), timeout=30)
            if answer.ok:
                found.append(Finding(master.name, "port 80", OK, f"reaches {other.name}'s"))
            else:
                found.append(
                    Finding(
                        master.name,
                        "port 80",
                        PROBLEM,
                        f"cannot reach {other.name}'s ({other.address}): ACME challenges it "
                        "passes there would fail; open port 80 between the masters",
                    )
                )
    return found


def show(session: Session, as_json: bool = False) -> int:
    """Print the findings; 0 when there is no problem (warnings allowed), 1 when there is,
    COULD_NOT_LOOK when no host answered."""
    findings = look(session)
    if as_json:
        print(json.dumps({"findings": [asdict(finding) for finding in findings]}, indent=2))
    else:
        marks = {OK: "ok  ", PROBLEM: "FAIL", WARNING: "warn"}
        width = max(len(finding.subject) for finding in findings)
        for finding in findings:
            print(
                f"{marks[finding.outcome]}  {finding.subject.ljust(width)}  "
                f"{finding.check}: {finding.detail}"
            )
    if not any(f.check == "ssh" and f.outcome == OK for f in findings):
        return COULD_NOT_LOOK
    return 1 if any(finding.outcome == PROBLEM for finding in findings) else 0
