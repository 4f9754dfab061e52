"""What a compromised worker would try with the credentials it holds, shared by the unit tests
(loopback Redis and Sentinels) and the lab's (issue #33): each must be refused."""

from __future__ import annotations

PRIMARY_NAME = "wssfleet"

# With the Redis user in a worker's environment file: take over replication, kill clients,
# read the replication password, run code of its own, wipe or list the data.
REDIS_ADMIN_COMMANDS = (
    ("REPLICAOF", "127.0.0.1", "1"),
    ("SLAVEOF", "NO", "ONE"),
    ("CLIENT", "KILL", "TYPE", "normal"),
    ("CONFIG", "GET", "masterauth"),
    ("CONFIG", "SET", "maxmemory", "1"),
    ("ACL", "LIST"),
    ("ACL", "SETUSER", "wssfleet", "+@all"),
    ("DEBUG", "SLEEP", "0"),
    ("FUNCTION", "LOAD", "REPLACE", "#!lua name=x\nredis.register_function('x', function() end)"),
    ("FUNCTION", "FLUSH"),
    ("SCRIPT", "FLUSH"),
    ("EVAL", "return 1", "0"),
    ("FLUSHDB",),
    ("FLUSHALL",),
    ("SHUTDOWN",),
    ("KEYS", "*"),
    ("GET", "other:key"),
    ("SUBSCRIBE", "other-channel"),
)

# With the Sentinel user in a worker's environment file: force a failover, re-point or forget
# the primary, read or change the Sentinels' users.
SENTINEL_ADMIN_COMMANDS = (
    ("SENTINEL", "FAILOVER", PRIMARY_NAME),
    ("SENTINEL", "SET", PRIMARY_NAME, "quorum", "1"),
    ("SENTINEL", "RESET", "*"),
    ("SENTINEL", "REMOVE", PRIMARY_NAME),
    ("SENTINEL", "MONITOR", "elsewhere", "127.0.0.1", "1", "1"),
    ("SENTINEL", "CONFIG", "SET", "resolve-hostnames", "yes"),
    ("SENTINEL", "MASTERS"),
    ("SENTINEL", "DEBUG"),
    ("ACL", "LIST"),
    ("ACL", "SETUSER", "wssfleet-worker", "+@all"),
    ("CLIENT", "KILL", "TYPE", "normal"),
    ("SHUTDOWN",),
)
