"""Redis connections for the message plane's hot paths: publishing and receiving.

redis-py's asyncio client lends a pooled connection to one command at a time and waits for its
reply before the connection serves anyone else, so forty concurrent publishes cost forty
connections, forty writes, forty reads and a timeout for each; and its pub/sub reader wakes a
task, arms a timeout and runs a retry wrapper for every message. ioredis, which the seeds'
Node stack uses, writes every command on one connection as it comes, matches the replies in
order and hands pub/sub messages to a callback as they are parsed. This does the same, on
asyncio's protocol callbacks: commands issued in one pass of the event loop leave in one
write, and hiredis (redis-py's own C parser) parses what comes back.

Only what those paths need: commands and their replies in order (``Link``, made again when it
is lost), and a connection whose every reply goes to a callback (``RespConnection.listen``, for
pub/sub). The rarer history reads stay on redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import Counter, deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

log = logging.getLogger("wssfleet.broker")

Argument = str | bytes | int
# While a connection to the primary is being made, how often the Sentinels are asked whether
# a failover has named another one.
SENTINEL_RECHECK = 0.25


class ReplyError(Exception):
    """Redis answered the command with an error; its text is Redis's."""


class LinkLost(ConnectionError):
    """The connection closed, could not be made, or went silent before the command was
    answered. ``sent``: whether the command had left, so that Redis may have run it."""

    def __init__(self, reason: str, sent: bool = False) -> None:
        super().__init__(reason)
        self.sent = sent


class RespConnection(asyncio.Protocol):
    """One connection to Redis: writes commands, hands each reply to the oldest waiter, or
    every reply to a listener once ``listen`` is called (pub/sub)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._reader = hiredis.Reader()
        # Each waiter with the moment its reply is overdue.
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._outgoing: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._listener: Callable[[Any], None] | None = None
        self._read_through: Callable[[], None] = lambda: None
        self.open = False
        self.lost: asyncio.Future[None] = loop.create_future()
        # When Redis last sent anything: a listener's health check.
        self.heard = loop.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = transport  # type: ignore[assignment]
        self.open = True

    def data_received(self, data: bytes) -> None:
        self.heard = self._loop.time()
        self._reader.feed(data)
        self._hand_out_replies()
        if self._listener is not None:
            try:
                self._read_through()
            except Exception:
                log.exception("messages from Redis could not be handled")

    def _hand_out_replies(self) -> None:
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as error:
                self.close(f"Redis sent something that is not RESP: {error}")
                return
            if reply is False:
                return
            if self._listener is not None:
                try:
                    self._listener(reply)
                except Exception:
                    # One message's failure must not cost the others their connection.
                    log.exception("a message from Redis could not be handled")
                continue
            future, _ = self._waiting.popleft()
            if future.done():
                continue  # its caller stopped waiting
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(ReplyError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, error: Exception | None) -> None:
        self.open = False
        self._transport = None
        self._fail_waiting(f"connection lost ({error or 'closed by Redis'})")
        if not self.lost.done():
            self.lost.set_result(None)

    def _fail_waiting(self, reason: str) -> None:
        # The newest waiters' commands may still be in _outgoing, never written.
        written = len(self._waiting) - len(self._outgoing)
        self._outgoing.clear()
        for number, (future, _) in enumerate(self._waiting):
            if not future.done():
                future.set_exception(LinkLost(reason, sent=number < written))
                # Marked retrieved: a caller that gave up must not leave a warning behind.
                future.exception()
        self._waiting.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def send(self, *arguments: Argument) -> None:
        """Queue a command for this pass's write (a listener's replies go to the listener)."""
        if not self.open:
            raise LinkLost("connection lost")
        if not self._outgoing:
            self._loop.call_soon(self._flush)
        self._outgoing.append(hiredis.pack_command(arguments))

    def command(self, *arguments: Argument) -> asyncio.Future[Any]:
        """Send a command; its reply, or LinkLost if none comes within the timeout."""
        self.send(*arguments)
        future = self._loop.create_future()
        self._waiting.append((future, self._loop.time() + self._timeout))
        # One timer for the connection, not one for every command.
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._timeout, self._check_overdue)
        return future

    def _check_overdue(self) -> None:
        self._watchdog = None
        if not self._waiting:
            return
        overdue = self._waiting[0][1] - self._loop.time()
        if overdue <= 0:
            self.close("Redis did not answer in time")
        else:
            self._watchdog = self._loop.call_later(overdue, self._check_overdue)

    def listen(
        self, listener: Callable[[Any], None], read_through: Callable[[], None] = lambda: None
    ) -> None:
        """From now on every reply goes to ``listener`` (after SUBSCRIBE, Redis sends only
        pushes: subscribe confirmations, messages, pongs), and ``read_through`` is called
        once the replies of each read from the socket have all gone to it."""
        self._listener = listener
        self._read_through = read_through

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if self._transport is not None and outgoing:
            self._transport.write(b"".join(outgoing))

    def close(self, reason: str) -> None:
        if self._transport is not None:
            self._transport.abort()
        self.open = False
        self._fail_waiting(reason)


class Address:
    """Where a ``redis://`` or ``rediss://`` URL points, and as whom; with ``sentinels``,
    whichever server they name the primary at the moment of each connection."""

    def __init__(
        self,
        url: str,
        sentinels: tuple[str, ...] = (),
        primary_name: str = "wssfleet",
        sentinel_password: str = "",
        sentinel_user: str = "",
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "localhost"
        self.port = parts.port or 6379
        self.sentinels = [
            (host, int(port)) for host, _, port in (item.rpartition(":") for item in sentinels)
        ]
        self.primary_name = primary_name
        self.sentinel_password = sentinel_password
        self.sentinel_user = sentinel_user
        # The server the last connection reached.
        self.current: tuple[str, int] | None = None
        # rediss: TLS, checked against the system's CAs or the one ?ssl_ca_certs names.
        authority = parse_qs(parts.query).get("ssl_ca_certs", [None])[0]
        self._ssl = (
            ssl.create_default_context(cafile=authority) if parts.scheme == "rediss" else None
        )
        self._user = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        database = parts.path.strip("/")
        self._database = int(database) if database else 0

    async def primary(self, timeout: float) -> tuple[str, int]:
        """Where the primary is: the URL's server, or the one a majority of the Sentinels
        name. One Sentinel's word is not enough: one back from a cut names the old primary
        for seconds, and that server, not yet converted, still says it is the primary (a
        process that followed it would read a history that ends before what its clients
        saw, and store what the next conversion discards). LinkLost when no majority names
        the same server within ``timeout``."""
        if not self.sentinels:
            return self.host, self.port
        majority = len(self.sentinels) // 2 + 1
        asks = [
            asyncio.ensure_future(self._named_by(host, port, timeout))
            for host, port in self.sentinels
        ]
        votes: Counter[tuple[str, int]] = Counter()
        try:
            for answer in asyncio.as_completed(asks):
                named = await answer
                if named is not None:
                    votes[named] += 1
                    if votes[named] >= majority:
                        return named
        finally:
            for ask in asks:
                ask.cancel()
            await asyncio.gather(*asks, return_exceptions=True)
        said = ", ".join(f"{host}:{port} by {count}" for (host, port), count in votes.items())
        raise LinkLost(
            f"no majority of the {len(self.sentinels)} Sentinels names one primary "
            f"({said or 'none answered'})"
        )

    async def _named_by(self, host: str, port: int, timeout: float) -> tuple[str, int] | None:
        """The primary one Sentinel names; None if it does not answer or knows none."""
        loop = asyncio.get_running_loop()
        sentinel: RespConnection | None = None
        try:
            async with asyncio.timeout(timeout):
                # With TLS to Redis, TLS to the Sentinels too (the same CA).
                _, sentinel = await loop.create_connection(
                    lambda: RespConnection(loop, timeout), host, port, ssl=self._ssl
                )
                if self.sentinel_password:
                    user = (self.sentinel_user,) if self.sentinel_user else ()
                    await sentinel.command("AUTH", *user, self.sentinel_password)
                found = await sentinel.command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.primary_name
                )
        except (OSError, TimeoutError, LinkLost, ReplyError):
            return None
        finally:
            if sentinel is not None:
                sentinel.close("asked")
        return (found[0].decode(), int(found[1])) if found else None

    async def connect(self, client_name: str, timeout: float) -> RespConnection:
        """A new connection, authenticated, on its database, named ``client_name`` in
        Redis's CLIENT LIST; LinkLost if Redis cannot be reached (or, through Sentinels, the
        server they name is not a primary yet), ReplyError if it refuses.

        Through Sentinels, a connection to the primary they named may hang: that host was
        cut off, and answers nothing until ``timeout``. Meanwhile they are asked again every
        SENTINEL_RECHECK seconds, and the attempt is dropped for the server they name once
        a failover ends (in the lab this brought a process back 0.3 to 0.7 s sooner)."""
        named = await self.primary(timeout)
        if not self.sentinels:
            return await self._connect_to(named, client_name, timeout)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            attempt = asyncio.ensure_future(self._connect_to(named, client_name, timeout))
            try:
                while not attempt.done():
                    await asyncio.wait([attempt], timeout=SENTINEL_RECHECK)
                    if attempt.done():
                        break
                    with contextlib.suppress(LinkLost):
                        now_named = await self.primary(SENTINEL_RECHECK)
                        if now_named != named:
                            log.info("redis: the Sentinels now name %s:%d", *now_named)
                            named = now_named
                            break
            finally:
                if not attempt.done():
                    attempt.cancel()
                    await asyncio.gather(attempt, return_exceptions=True)
            if attempt.done() and not attempt.cancelled():
                return attempt.result()
            if asyncio.get_running_loop().time() >= deadline:
                raise LinkLost(f"cannot connect to Redis within {timeout} s")

    async def _connect_to(
        self, named: tuple[str, int], client_name: str, timeout: float
    ) -> RespConnection:
        loop = asyncio.get_running_loop()
        connection: RespConnection | None = None
        host, port = named
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    lambda: RespConnection(loop, timeout), host, port, ssl=self._ssl
                )
                setup = []
                if self._password is not None:
                    credentials = [self._password]
                    if self._user is not None:
                        credentials.insert(0, self._user)
                    setup.append(connection.command("AUTH", *credentials))
                if self._database:
                    setup.append(connection.command("SELECT", self._database))
                setup.append(connection.command("CLIENT", "SETNAME", client_name))
                if self.sentinels:
                    # Mid-failover the Sentinels may still name the old primary, now a replica.
                    setup.append(connection.command("ROLE"))
                replies = await asyncio.gather(*setup)
                if self.sentinels and replies[-1][0] != b"master":
                    connection.close("not the primary")
                    raise LinkLost(f"{host}:{port} is not the primary (yet)")
                self.current = (host, port)
        except (OSError, TimeoutError) as error:
            if connection is not None:
                connection.close("could not be set up")
            raise_if_cancelled()
            raise LinkLost(f"cannot connect to Redis ({type(error).__name__})") from error
        except ReplyError:
            assert connection is not None
            connection.close("refused")
            raise
        except asyncio.CancelledError:
            # Given up for another server (connect), or the process stops.
            if connection is not None:
                connection.close("given up")
            raise
        return connection


def raise_if_cancelled() -> None:
    """Raise CancelledError if this task was asked to stop. A connect that fails as the
    task is cancelled can surface as its failure instead (Python 3.11's create_connection
    and asyncio.timeout); a retry loop that took it for a lost link would never stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Link:
    """Commands and their replies, pipelined on one connection that is made on first use and
    again after it is lost."""

    def __init__(self, address: Address | str, client_name: str, timeout: float) -> None:
        """
        + address: the server (or the Sentinels that name it), user, password and database,
          or a redis:// or rediss:// URL that says them
        + client_name: this connection in Redis's CLIENT LIST
        + timeout: seconds to connect, and for a reply before the connection is dropped
        """
        self._address = address if isinstance(address, Address) else Address(address)
        self._client_name = client_name
        self._timeout = timeout
        self._connection: RespConnection | None = None
        self._connecting: asyncio.Task[RespConnection] | None = None

    async def call(self, *arguments: Argument) -> Any:
        """Send one command and return its reply: ``ReplyError`` for Redis's refusals,
        ``LinkLost`` when no connection carried it to a reply in time (a silent connection
        is dropped, so the next command makes a new one)."""
        connection = self._connection
        if connection is None or not connection.open:
            connection = await self._connected()
        return await connection.command(*arguments)

    async def calls(self, *commands: tuple[Argument, ...]) -> list[Any]:
        """Several commands, one after the other on the same connection (a WAIT after the
        write it waits for); their replies, or the first one's error."""
        connection = self._connection
        if connection is None or not connection.open:
            connection = await self._connected()
        replies = await asyncio.gather(
            *(connection.command(*command) for command in commands), return_exceptions=True
        )
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies

    async def _connected(self) -> RespConnection:
        # One connection attempt at a time, however many commands wait for it.
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(
                self._address.connect(self._client_name, self._timeout)
            )
        self._connection = await asyncio.shield(self._connecting)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close("closed")
            self._connection = None
