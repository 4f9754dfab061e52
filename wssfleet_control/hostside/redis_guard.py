#!/usr/bin/python3
"""The promotion guard, on each redis host of a fleet with several: the Sentinels may promote
only a Redis that holds what the primary held.

A Redis back from a cut still calls itself primary until the Sentinels turn it into a replica
(about 10 s in the lab), and the Sentinels would promote it meanwhile if the new primary failed:
they read a replica's replica-priority only from a Redis that calls itself a replica. What the
new primary had acknowledged since the cut would be gone. So, twice a second:

- a Redis that calls itself primary while a majority of the Sentinels name another is made a
  replica of that one at once (what the Sentinels would do later). Not a Redis this guard saw
  promoted in the last PROMOTION_GRACE seconds: the Sentinels name the old primary for a
  moment after they promote a replica. And when this guard has just started and saw no
  promotion, only if the Sentinels see the one they name up;
- replica-priority (the Sentinels never promote a replica at 0) is 0 on a Redis that calls
  itself primary or is copying the primary, and 100 on a replica whose link to the primary is
  up and whose copy is done. A replica whose link drops keeps what it had: the primary's loss
  drops every replica's link, and the one that was in step must stay promotable then.

Redis starts with replica-priority 0 (redis.conf): a restarted Redis waits for its first copy
too. Installed by roles/redis.py; run by wssfleet-redis-guard.service; standard library only.

    redis_guard.py --port P --user U --password-file F --address A --primary-name N
        --sentinel HOST:PORT ... --sentinel-user U --sentinel-password-file F
        [--ca-file F] [--interval S]
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import time

PROMOTABLE = 100  # Redis's default replica-priority
UNPROMOTABLE = 0
# Seconds after a promotion this guard saw during which the Sentinels may still name the old
# primary (they switch once the promoted replica reports itself primary, within seconds).
PROMOTION_GRACE = 10.0
# A reply larger than this is not one of the few this asks for.
LONGEST_REPLY = 1 << 20


class RedisError(Exception):
    """Redis answered with an error, or not in its protocol."""


def wanted_priority(replication: dict[str, str], current: int) -> int:
    """The replica-priority this Redis should have, from its INFO replication."""
    if replication.get("role") != "slave" or replication.get("master_sync_in_progress") == "1":
        return UNPROMOTABLE
    if replication.get("master_link_status") == "up":
        return PROMOTABLE
    return current


def parsed_info(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon and not key.startswith("#"):
            fields[key] = value.strip()
    return fields


class Connection:
    """One connection to Redis or a Sentinel, speaking RESP2 for the few commands this sends."""

    def __init__(self, host: str, port: int, ca_file: str | None, timeout: float) -> None:
        raw = socket.create_connection((host, port), timeout=timeout)
        if ca_file:
            context = ssl.create_default_context(cafile=ca_file)
            # The certificates are the deployment's own CA's, for private addresses, and this
            # reaches the local Redis on loopback.
            context.check_hostname = False
            raw = context.wrap_socket(raw)
        self.socket = raw
        self.reader = raw.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.socket.close()

    def command(self, *words: str) -> object:
        encoded = [word.encode() for word in words]
        request = b"*%d\r\n" % len(encoded) + b"".join(
            b"$%d\r\n%s\r\n" % (len(word), word) for word in encoded
        )
        self.socket.sendall(request)
        return self._reply()

    def _line(self) -> bytes:
        line = self.reader.readline(LONGEST_REPLY)
        if not line.endswith(b"\r\n"):
            raise RedisError("the connection closed or the reply is not RESP")
        return line[:-2]

    def _reply(self) -> object:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            length = int(rest)
            if length < 0:
                return None
            if length > LONGEST_REPLY:
                raise RedisError(f"a reply of {length} bytes")
            data = self.reader.read(length + 2)
            return data[:-2].decode(errors="replace")
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._reply() for _ in range(min(count, 64))]
        raise RedisError(f"unexpected reply {line[:40]!r}")


def once(connection: Connection) -> tuple[int, int, dict[str, str]]:
    """Set replica-priority as wanted_priority says: (before, after, INFO replication)."""
    replication = parsed_info(str(connection.command("INFO", "replication")))
    answer = connection.command("CONFIG", "GET", "replica-priority")
    current = int(answer[1]) if isinstance(answer, list) and len(answer) == 2 else PROMOTABLE
    wanted = wanted_priority(replication, current)
    if wanted != current:
        connection.command("CONFIG", "SET", "replica-priority", str(wanted))
    return current, wanted, replication


def stale_behind(
    views: list[tuple[str, bool] | None],
    myself: str,
    promoted_lately: bool,
    history_known: bool,
) -> str | None:
    """The primary this Redis, which calls itself primary, should follow, or None. ``views``:
    each Sentinel's (the primary it names, whether it sees that one up), None where it did not
    answer; a majority of all Sentinels must name the same other one."""
    named = [view[0] for view in views if view]
    majority = len(views) // 2 + 1
    for primary in set(named):
        if primary == myself or named.count(primary) < majority or promoted_lately:
            continue
        seen_up = sum(1 for view in views if view and view[0] == primary and view[1])
        if history_known or seen_up >= majority:
            return primary
    return None


def sentinel_views(options, password: str) -> list[tuple[str, bool] | None]:
    """What each Sentinel says of the primary: ("address port", seen up), asked in turn."""
    views: list[tuple[str, bool] | None] = []
    for sentinel in options.sentinel:
        host, _, port = sentinel.rpartition(":")
        try:
            link = Connection(host, int(port), options.ca_file, timeout=1)
            try:
                link.command("AUTH", options.sentinel_user, password)
                reply = link.command("SENTINEL", "MASTER", options.primary_name)
            finally:
                link.close()
        except (OSError, RedisError, ValueError):
            views.append(None)
            continue
        if not isinstance(reply, list):
            views.append(None)
            continue
        fields = dict(zip(reply[::2], reply[1::2], strict=False))
        flags = str(fields.get("flags", "")).split(",")
        views.append(
            (f"{fields.get('ip')} {fields.get('port')}", not {"s_down", "o_down"} & set(flags))
        )
    return views


def say(**event) -> None:
    print(json.dumps(event), flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password-file", required=True)
    parser.add_argument("--address", required=True, help="this Redis's, as the Sentinels name it")
    parser.add_argument("--primary-name", required=True)
    parser.add_argument("--sentinel", action="append", required=True, help="HOST:PORT")
    parser.add_argument("--sentinel-user", required=True)
    parser.add_argument("--sentinel-password-file", required=True)
    parser.add_argument("--ca-file")
    parser.add_argument("--interval", type=float, default=0.5)
    options = parser.parse_args(argv)
    with open(options.password_file) as file:
        password = file.read().strip()
    with open(options.sentinel_password_file) as file:
        sentinel_password = file.read().strip()
    myself = f"{options.address} {options.port}"
    started = time.monotonic()
    replica_until: float | None = None  # when this guard last saw a replica here
    connection: Connection | None = None
    said = ""
    while True:
        try:
            if connection is None:
                connection = Connection("127.0.0.1", options.port, options.ca_file, timeout=5)
                connection.command("AUTH", options.user, password)
            before, after, replication = once(connection)
            now = time.monotonic()
            if after != before:
                say(event="replica-priority", to=after, role=replication.get("role"))
            if replication.get("role") == "slave":
                replica_until = now
            elif replication.get("role") == "master":
                primary = stale_behind(
                    sentinel_views(options, sentinel_password),
                    myself,
                    promoted_lately=replica_until is not None
                    and now - replica_until < PROMOTION_GRACE,
                    history_known=now - started >= PROMOTION_GRACE or replica_until is not None,
                )
                if primary:
                    connection.command("REPLICAOF", *primary.split())
                    say(event="stale primary made a replica", primary=primary)
            said = ""
        except (OSError, RedisError, ValueError) as error:
            if connection is not None:
                connection.close()
                connection = None
            # Said once per kind of failure: Redis restarting is not news every half second.
            if str(error) != said:
                say(event="unreachable", error=str(error))
                said = str(error)
        time.sleep(options.interval)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
