"""One operator at a time, and a record of every run.

deploy, rollback, rotate-secret, drain, ready and renew hold the fleet lock while they run: a
file on each master that answers, created only where there is none (the shell's noclobber
opens it with O_EXCL, so two runs cannot both create it), taken master by master in the
inventory's order, so that two runs racing for it meet at the first master and one of them
stops, saying who holds it, since when, from where and running what. A run that died leaves
its lock behind: ``wssfleet lock release`` removes it (and says whose it was).

Every such run then appends one line to the audit log on the masters it locked: when, who,
from which machine, the command, this checkout's commit and whether it had local changes,
the release, a digest of the settings, and the outcome. ``wssfleet audit`` prints it. The log
keeps its last AUDIT_LINES lines.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import secrets
import socket
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

from wssfleet_control.checkout import REPO
from wssfleet_control.commands import quote
from wssfleet_control.deployment import DeployError
from wssfleet_control.hostside import layout

AUDIT_LINES = 10_000
# The exit code of the lock command when another run holds the lock (it prints the holder's
# record).
HELD = 3


def operator() -> dict[str, Any]:
    """Who runs this command, from where, on which checkout."""
    return {"who": getpass.getuser(), "machine": socket.gethostname(), **checkout_state()}


def checkout_state() -> dict[str, Any]:
    def git(*arguments: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(REPO), *arguments], capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "--short=12", "HEAD"), "dirty": bool(git("status", "-s"))}


def settings_digest(fleet) -> str:
    return hashlib.sha256(fleet.settings.model_dump_json().encode()).hexdigest()[:12]


def describe_holder(holder: dict[str, Any]) -> str:
    since = datetime.fromtimestamp(float(holder.get("since", 0)), UTC)
    return (
        f"{holder.get('who', '?')} on {holder.get('machine', '?')} (`wssfleet "
        f"{holder.get('command', '?')}` since {since:%Y-%m-%d %H:%M:%S} UTC)"
    )


class FleetLock:
    """The fleet lock for one command; ``finish`` records the run and lets the lock go."""

    def __init__(self, session, command: str) -> None:
        self.session = session
        self.command = command
        self.token = secrets.token_hex(8)
        self.taken: list[str] = []
        self.started = time.time()
        # What a deploy under this lock rolled out (rotate-secret's deploy sets it).
        self.deployed_release = ""
        # Who and which checkout, read once (git) for the lock and the audit line alike.
        self.operator = operator()

    def acquire(self) -> None:
        """Take the lock on every master that answers; DeployError naming the holder when
        another run has it (after letting go of what this one took)."""
        session = self.session
        session.connect(every_host=False)
        masters = [m.name for m in session.fleet.masters if m.name not in session.unreachable]
        if not masters:
            raise DeployError("no master answers over SSH: the fleet lock cannot be taken")
        record = json.dumps(
            {**self.operator, "command": self.command, "since": int(self.started), "id": self.token}
        )
        for master in masters:
            answer = session.on(master, _take(record))
            if answer.ok:
                self.taken.append(master)
                continue
            self._let_go()
            if answer.stdout.startswith("{"):  # the holder's record
                try:
                    holder = json.loads(answer.stdout)
                except ValueError:
                    holder = {}
                raise DeployError(
                    f"the fleet lock is held on {master} by {describe_holder(holder)}: wait for "
                    "that run to end; if it is dead, `wssfleet lock release` removes the lock"
                )
            raise DeployError(f"cannot take the fleet lock on {master}: {answer.stderr.strip()}")

    def finish(self, outcome: str, release: str = "") -> None:
        """Append this run to the audit log on the masters it locked, then let go."""
        if not self.taken:
            return
        entry = {
            "time": datetime.fromtimestamp(self.started, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "at": round(self.started, 3),
            **self.operator,
            "command": self.command,
            "release": release,
            "settings": settings_digest(self.session.fleet),
            "seconds": round(time.time() - self.started, 1),
            "outcome": outcome,
        }
        for master in self.taken:
            self.session.on(master, append_to_audit(json.dumps(entry)))
        self._let_go()

    def _let_go(self) -> None:
        for master in self.taken:
            self.session.on(master, _release(self.token))
        self.taken = []


def _take(record: str) -> str:
    lock = quote(layout.FLEET_LOCK)
    return (
        f"mkdir -p {quote(layout.STATE)} && "
        f"{{ ( set -C; printf '%s\\n' {quote(record)} > {lock} ) 2>/dev/null "
        f"|| {{ cat {lock}; exit {HELD}; }}; }}"
    )


def _release(token: str) -> str:
    lock = quote(layout.FLEET_LOCK)
    return f"if grep -qF {quote(token)} {lock} 2>/dev/null; then rm -f {lock}; fi"


def append_to_audit(line: str) -> str:
    log = quote(layout.AUDIT_LOG)
    return (
        f"umask 077 && printf '%s\\n' {quote(line)} >> {log} && "
        f"if [ $(wc -l < {log}) -gt {AUDIT_LINES} ]; then "
        f"tail -n {AUDIT_LINES} {log} > {log}.tmp && mv {log}.tmp {log}; fi"
    )


def holders(session) -> dict[str, dict[str, Any] | None]:
    """Each answering master's lock holder (None: not locked there)."""
    session.connect(every_host=False)
    found = {}
    for master in session.fleet.masters:
        if master.name in session.unreachable:
            continue
        answer = session.on(master.name, f"cat {quote(layout.FLEET_LOCK)} 2>/dev/null || true")
        try:
            found[master.name] = json.loads(answer.stdout) if answer.stdout.strip() else None
        except ValueError:
            found[master.name] = {"who": "?", "unreadable": answer.stdout[:200]}
    return found


def force_release(session) -> dict[str, dict[str, Any] | None]:
    """Remove the lock on every answering master, whoever holds it; what each held, and a
    line in each one's audit log."""
    held = holders(session)
    removed = [holder for holder in held.values() if holder is not None]
    if removed:
        now = time.time()
        entry = {
            "time": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "at": round(now, 3),
            **operator(),
            "command": "lock release",
            "outcome": f"removed the lock of {describe_holder(removed[0])}",
        }
        for master in held:
            session.on(master, f"rm -f {quote(layout.FLEET_LOCK)}")
            session.on(master, append_to_audit(json.dumps(entry)))
    return held


def audit(session, lines: int) -> tuple[list[str], list[dict[str, Any]]]:
    """The last ``lines`` runs, merged from the logs of every master that answers (a run
    writes to each master it locked: one that was down misses it), oldest first; and the
    masters read."""
    session.connect(every_host=False)
    read, seen = [], set()
    for master in session.fleet.masters:
        if master.name in session.unreachable:
            continue
        answer = session.on(
            master.name, f"tail -n {int(lines)} {quote(layout.AUDIT_LOG)} 2>/dev/null || true"
        )
        read.append(master.name)
        seen.update(line for line in answer.stdout.splitlines() if line.strip())
    if not read:
        raise DeployError("no master answers over SSH: the audit log cannot be read")
    entries = []
    for line in seen:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    entries.sort(key=lambda entry: float(entry.get("at", 0)))
    return read, entries[-lines:]
