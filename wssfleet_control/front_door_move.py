"""A planned move of the front door (`wssfleet front-door move`, `wssfleet drain-master`,
`make drain-master MASTER=…`): another master takes the floating address while the old
holder keeps serving the connections it has, which then move with 1012, evenly over
drain_seconds, through the new holder; done when the old holder holds no client. Each host's
part is hostside/front_door_handover.py, which says how."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from wssfleet_control import commands

# keepalived gives the address away within two failed checks (a second each) and the other
# master takes it at its next advert: a few seconds at most.
TAKE_OVER_SECONDS = 10
# After the drain window, how long stragglers (a client slow to close) may take.
STRAGGLERS_SECONDS = 15


class MoveError(Exception):
    """The move cannot start or did not finish; str() says why and what to do."""


@dataclass
class Moved:
    """What a move did: from which master to which, how long the address took to move, how
    long until the old holder held no client."""

    away_from: str
    to: str
    address_moved_after: float
    empty_after: float
    sessions_left: int

    def report(self) -> dict[str, object]:
        """For --json: the same facts as said(), a field each (seconds; -1 where the
        address did not have to move)."""
        return {
            "from": self.away_from,
            "to": self.to,
            "address_moved_after_seconds": round(self.address_moved_after, 3),
            "empty_after_seconds": round(self.empty_after, 3),
            "sessions_left": self.sessions_left,
        }

    def said(self) -> str:
        moved = (
            f"the front door moved from {self.away_from} to {self.to} in "
            f"{self.address_moved_after:.1f} s"
            if self.address_moved_after >= 0
            else f"{self.away_from} did not hold the front door ({self.to} does)"
        )
        if self.sessions_left:
            return f"{moved}; {self.away_from} still holds {self.sessions_left} clients"
        return f"{moved}; {self.away_from} holds no client ({self.empty_after:.1f} s)"


def holders(session) -> list[str]:
    address = session.fleet.front_door
    return [
        master.name
        for master in session.fleet.masters
        if session.on(master.name, commands.holds_address(address), timeout=15).stdout.strip()
    ]


def _sessions(session, name: str) -> int:
    masters = [master.address for master in session.fleet.masters]
    result = session.on(name, commands.front_door_handover("sessions", *masters), timeout=15)
    if not result.ok:
        raise MoveError(f"{name}: its HAProxy's sessions cannot be read: {result.stderr.strip()}")
    return json.loads(result.stdout)["sessions"]


def move(session, away_from: str | None = None, to: str | None = None, say=print) -> Moved:
    """Hand the front door from ``away_from`` (default: whoever holds it) to ``to`` (default:
    another master), then move the old holder's clients through the new one."""
    fleet = session.fleet
    address = fleet.front_door
    if not address:
        raise MoveError(
            "this fleet has no floating front door (front_door_address with two or more "
            "masters): in DNS mode each master's clients stay with it; take a master out of DNS "
            "first"
        )
    if ":" in address:
        raise MoveError(f"front_door_address {address} is IPv6: a planned move handles IPv4 only")
    names = [master.name for master in fleet.masters]
    for given in (away_from, to):
        if given is not None and given not in names:
            raise MoveError(f"{given} is not a master of this inventory: give one of {names}")
    held = holders(session)
    if len(held) != 1:
        raise MoveError(
            f"the front door is held by {' and '.join(held) or 'no master'}: a move needs "
            "exactly one holder (make status; check keepalived)"
        )
    holder = held[0]
    away_from = away_from or holder
    if to == away_from:
        raise MoveError(f"{to} cannot take the front door from itself")
    if away_from != holder:
        # It serves no client through the front door; only stragglers from before.
        say(f"--> {away_from} does not hold the front door ({holder} does)")
        return _emptied(session, away_from, holder, -1.0, time.monotonic())
    candidates = [to] if to else [name for name in names if name != holder]
    target = next(
        (
            name
            for name in candidates
            if session.on(name, commands.haproxy_answers(), timeout=15).ok
        ),
        None,
    )
    if target is None:
        raise MoveError(f"no other master answers ({', '.join(candidates)}): nowhere to move to")
    own = {master.name: master.address for master in fleet.masters}
    started = time.monotonic()
    try:
        say(f"--> {target} forwards what belongs to {holder}'s connections")
        _on(
            session,
            target,
            commands.front_door_handover("forward", address, own[holder], own[target]),
        )
        say(f"--> {holder} gives the front door away")
        _on(session, holder, commands.front_door_handover("release", address, own[holder]))
        deadline = time.monotonic() + TAKE_OVER_SECONDS
        while holders(session) != [target]:
            if time.monotonic() > deadline:
                raise MoveError(
                    f"{target} did not take the front door within {TAKE_OVER_SECONDS} s "
                    "(its keepalived: journalctl -u keepalived); nothing moved"
                )
            time.sleep(0.2)
        moved_after = time.monotonic() - started
        say(f"--> {target} holds the front door ({moved_after:.1f} s); moving the clients")
        seconds = fleet.settings.drain_seconds
        _on(
            session,
            holder,
            commands.front_door_handover("shed", own[holder], str(seconds)),
            timeout=seconds + 60,
        )
        return _emptied(session, holder, target, moved_after, started)
    finally:
        for name in (holder, target):
            session.on(name, commands.front_door_handover("end", address, own[name]), timeout=30)


def _emptied(session, name: str, holder: str, moved_after: float, started: float) -> Moved:
    deadline = time.monotonic() + session.fleet.settings.drain_seconds + STRAGGLERS_SECONDS
    left = _sessions(session, name)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _sessions(session, name)
    return Moved(name, holder, moved_after, time.monotonic() - started, left)


def _on(session, name: str, command: str, timeout: int = 30) -> str:
    result = session.on(name, command, timeout=timeout)
    if not result.ok:
        raise MoveError(f"{name}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout
