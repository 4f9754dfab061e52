"""The publish path's pipelined Redis connection, against a real redis-server with the deployed
ACLs: one connection carries every command, replies reach their own callers, and a lost or
silent connection fails what it carried and is made again."""

import asyncio
import contextlib
import os
import signal

import hiredis
import pytest

from roles.redis import ADMIN_REDIS_USER
from tests.processes import free_port
from wssfleet.pipelined import Address, Link, LinkLost, ReplyError, raise_if_cancelled


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


def publish_connections(redis_server, name: str) -> list[str]:
    listing = redis_server.cli("CLIENT", "LIST").decode()
    return [line for line in listing.splitlines() if f"name={name} " in line + " "]


def test_concurrent_commands_share_one_connection_and_get_their_own_replies(redis_server):
    async def scenario():
        link = Link(redis_server.url, "publish:unit", 2.0)
        replies = await asyncio.gather(
            *(link.call("SET", f"wssfleet:pipelined:{n}", str(n)) for n in range(500)),
            *(link.call("GET", f"wssfleet:pipelined:{n}") for n in range(500)),
        )
        connections = publish_connections(redis_server, "publish:unit")
        link.close()
        return replies, connections

    replies, connections = run(scenario())
    assert replies[:500] == [b"OK"] * 500
    assert replies[500:] == [str(n).encode() for n in range(500)]
    assert len(connections) == 1, connections


def test_a_refused_command_fails_alone(redis_server):
    async def scenario():
        link = Link(redis_server.url, "publish:unit", 2.0)
        before, refused, after = await asyncio.gather(
            link.call("SET", "wssfleet:pipelined:a", "1"),
            # The workers' user may not run FLUSHDB (roles/redis.py).
            link.call("FLUSHDB"),
            link.call("GET", "wssfleet:pipelined:a"),
            return_exceptions=True,
        )
        link.close()
        return before, refused, after

    before, refused, after = run(scenario())
    assert (before, after) == (b"OK", b"1")
    assert isinstance(refused, ReplyError) and str(refused).startswith("NOPERM"), refused


def test_wrong_credentials_are_refused_by_redis(redis_server):
    async def scenario():
        url = redis_server.url.replace(redis_server.password, "not-the-password")
        with pytest.raises(ReplyError, match="WRONGPASS"):
            await Link(url, "publish:unit", 2.0).call("PING")

    run(scenario())


def test_a_restarted_redis_is_reached_on_a_new_connection(redis_server):
    async def scenario():
        link = Link(redis_server.url, "publish:unit", 2.0)
        assert await link.call("PING") == b"PONG"
        redis_server.stop()
        # The loop sees the connection close (a service's loop always runs), then the next
        # command finds no server to connect to.
        await asyncio.wait_for(link._connection.lost, 5)
        with pytest.raises(LinkLost) as lost:
            await link.call("PING")
        assert not lost.value.sent, "nothing can have left for a server that is gone"
        redis_server.start()
        answer = await link.call("PING")
        link.close()
        return answer

    assert run(scenario()) == b"PONG"


def test_a_silent_redis_fails_the_command_sent_and_drops_the_connection(redis_server):
    async def scenario():
        link = Link(redis_server.url, "publish:unit", 0.5)
        assert await link.call("PING") == b"PONG"
        assert redis_server.process is not None
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            started = asyncio.get_running_loop().time()
            with pytest.raises(LinkLost, match="did not answer in time") as silent:
                await link.call("PING")
            waited = asyncio.get_running_loop().time() - started
            assert silent.value.sent
            assert 0.4 <= waited < 2.0, waited
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        # The dropped connection's replies can never reach a later caller: a new one is made.
        answer = await link.call("GET", "wssfleet:pipelined:none")
        link.close()
        return answer

    assert run(scenario()) is None


def test_commands_in_flight_when_the_connection_dies_are_failed_as_sent(redis_server):
    # The workers' user may not EVAL, so the command that holds Redis runs as the operator.
    admin_url = f"redis://{ADMIN_REDIS_USER}:{redis_server.admin_password}@127.0.0.1:" + str(
        redis_server.port
    )

    async def scenario():
        link = Link(admin_url, "publish:unit", 5.0)
        assert await link.call("PING") == b"PONG"
        busy = asyncio.ensure_future(link.call("EVAL", "while true do end", 0))
        queued = asyncio.ensure_future(link.call("PING"))
        await asyncio.sleep(0.2)
        assert redis_server.process is not None
        redis_server.process.kill()
        redis_server.process.wait()
        redis_server.process = None
        return await asyncio.gather(busy, queued, return_exceptions=True)

    lost = run(scenario())
    assert all(isinstance(error, LinkLost) for error in lost), lost
    # Both had left: Redis may have run them, and the caller must not take them as unsent.
    assert [error.sent for error in lost] == [True, True]


def test_a_retry_loop_stops_when_cancelled_even_if_the_failure_hid_the_cancel():
    """A connect that fails just as its task is cancelled can surface as the failure (Python
    3.11's create_connection and asyncio.timeout): a retry loop must still stop."""
    stopping = asyncio.Event()

    async def retrying() -> None:
        while not stopping.is_set():
            # The cancel is lost here, as when a failure raced past it.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)
            raise_if_cancelled()

    async def scenario() -> bool:
        task = asyncio.create_task(retrying())
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.wait({task}, timeout=2)
        stopped = task.cancelled()
        stopping.set()
        await asyncio.gather(task, return_exceptions=True)
        return stopped

    assert run(scenario())


class NamingSentinel:
    """A Sentinel's answer to where the primary is, fixed: ``names`` (None: it knows none),
    or no answer at all (``silent``), as one cut off or back from a cut would give."""

    def __init__(self, names: tuple[str, int] | None, silent: bool = False) -> None:
        self.names, self.silent = names, silent
        self.asked = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = hiredis.Reader()
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(4096):
                parser.feed(data)
                while parser.gets() is not False:
                    self.asked += 1
                    if self.silent:
                        continue
                    if self.names is None:
                        writer.write(b"*-1\r\n")
                    else:
                        host, port = self.names[0].encode(), str(self.names[1]).encode()
                        writer.write(
                            b"*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(host), host, len(port), port)
                        )
                    await writer.drain()
        writer.close()


def test_a_sentinel_back_from_a_cut_naming_the_old_primary_is_outvoted(redis_server):
    """The old primary still says it is one until the Sentinels convert it: one Sentinel's
    word would send the process to it. A majority names the server it connects to."""
    new = ("127.0.0.1", redis_server.port)
    old = ("127.0.0.1", free_port())  # nothing listens: a connection there would fail

    async def primary_named_by(*sentinels: NamingSentinel) -> tuple[str, int]:
        addresses = [await sentinel.start() for sentinel in sentinels]
        address = Address(redis_server.url, sentinels=tuple(addresses))
        try:
            return await address.primary(1.0)
        finally:
            for sentinel in sentinels:
                sentinel.server.close()

    stale_first = NamingSentinel(old)
    assert run(primary_named_by(stale_first, NamingSentinel(new), NamingSentinel(new))) == new
    assert stale_first.asked == 1
    # One cut off, the other two naming the new one: it is the primary.
    cut_off = NamingSentinel(new, silent=True)
    assert run(primary_named_by(cut_off, NamingSentinel(new), NamingSentinel(new))) == new
    # No majority names one server: none is taken, and the error says what each said.
    with pytest.raises(LinkLost, match=r"no majority of the 3 Sentinels .*:\d+ by 1"):
        run(primary_named_by(NamingSentinel(old), NamingSentinel(new), NamingSentinel(None)))


def test_a_connection_hanging_on_a_cut_primary_is_dropped_when_the_sentinels_name_another(
    redis_server,
):
    """A cut-off primary answers nothing: a connection to it hangs until its timeout. When a
    failover ends meanwhile, the process goes to the new primary at once."""
    new = ("127.0.0.1", redis_server.port)

    async def scenario() -> tuple[float, tuple[str, int] | None, int]:
        # Accepts, then never answers, as a host cut off mid-way would (AUTH waits forever).
        held: list[asyncio.StreamWriter] = []

        async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)

        cut_off = await asyncio.start_server(hold, "127.0.0.1", 0)
        old = ("127.0.0.1", cut_off.sockets[0].getsockname()[1])
        sentinels = [NamingSentinel(old) for _ in range(3)]
        address = Address(redis_server.url, sentinels=tuple([await s.start() for s in sentinels]))
        loop = asyncio.get_running_loop()

        async def failover_ends() -> None:
            await asyncio.sleep(0.6)
            for sentinel in sentinels:
                sentinel.names = new

        started = loop.time()
        ending = asyncio.create_task(failover_ends())
        try:
            connection = await address.connect("bus:unit", timeout=5.0)
            took = loop.time() - started
            connection.close("done")
        finally:
            await ending
            for server in (cut_off, *(s.server for s in sentinels)):
                server.close()
            for writer in held:
                writer.close()
        return took, address.current, len(held)

    took, current, attempts_on_the_old = run(scenario())
    assert current == new
    assert attempts_on_the_old == 1
    # Not the 5 s timeout: the failover's end plus a recheck or two.
    assert took < 2.0, took
