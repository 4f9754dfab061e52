#!/usr/bin/python3
"""The canary, on each master: proves that messages still reach clients, through every worker
instance, while every health check may be green (an instance whose Redis subscription went
silent still answers /healthz; Centrifugo's issue 1189 published into the void for hours).

Every ``interval`` seconds it publishes a numbered message on its own channel
(wssfleet.canary.<master>) through the front door, as any client would: TLS at HAProxy, an
acknowledged publish. It holds a subscription to that channel on every worker instance
directly, so each instance's delivery is seen on its own, and serves on ``--metrics``:

- wssfleet_canary_delivery_seconds{server}: a histogram of the time from publish to receipt;
- wssfleet_canary_overdue_seconds{server}: how long the oldest acknowledged message that
  instance owes its subscriber has been owed (0: nothing owed); what the alert reads;
- wssfleet_canary_subscribed{server}: 1 while the subscription there is confirmed;
- wssfleet_canary_since_acknowledged_seconds: since the front door last acknowledged one.

Its tokens are signed with the canary key, which the workers accept for the canary's channels
only (wssfleet.auth.CANARY_CHANNELS). Installed by roles/canary.py; run by
wssfleet-canary.service; standard library only.

    canary.py --name M --server-name DOMAIN --front-door ADDRESS [--ca-file F ...]
              --instance SERVER=ADDRESS:PORT[=TLS_NAME] ... [--instance-ca F] --metrics A:P
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import hashlib
import hmac
import json
import os
import ssl
import struct
import sys
import time
from dataclasses import dataclass, field

# RFC 6455, 1.3: what the server's Sec-WebSocket-Accept is derived with.
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Bounds on what a server may make this process hold: the canary's own messages are tiny.
MAX_HANDSHAKE_BYTES = 16 * 1024
MAX_MESSAGE_BYTES = 64 * 1024
HANDSHAKE_TIMEOUT = 5.0
# A connection whose reads hear nothing this long is dead (the service's heartbeat is every
# few seconds; the canary's own messages every interval).
SILENCE_LIMIT = 15.0
RECONNECT_DELAY = 0.5
# After an instance closed the subscription with 1012 or 1001 (a drain, a restart), the
# canary stays away this long: back at once, it would be a client the instance's drain waits
# for, and each rollout step would last the whole drain window.
AWAY_AFTER_RESTART = 10.0
# Acknowledged publishes remembered per canary: the overdue age of anything older than this
# many intervals is not told apart (the alert fires long before).
REMEMBERED = 600
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The service's close code for a token that expired: reconnect with a fresh one.
CHANNEL_PREFIX = "wssfleet.canary."


def log(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


# Tokens: the service's format (wssfleet.auth), minted with the standard library.


def _segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint(key: str, subject: str, ttl: int, now: float | None = None) -> str:
    """An HS256 token for ``subject`` whose kid names the canary key, living ``ttl`` s."""
    issued = int(time.time() if now is None else now)
    kid = hashlib.sha256(b"wssfleet key id:" + key.encode()).hexdigest()[:16]
    header = _segment(json.dumps({"alg": "HS256", "kid": kid, "typ": "JWT"}).encode())
    claims = _segment(
        json.dumps(
            {"sub": subject, "iat": issued, "exp": issued + ttl}, separators=(",", ":")
        ).encode()
    )
    signing_input = f"{header}.{claims}"
    signature = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_segment(signature)}"


# A WebSocket client (RFC 6455): text frames, pings answered, everything bounded.


class Closed(Exception):
    """The WebSocket closed or failed; str() says how."""


def masked(opcode: int, payload: bytes) -> bytes:
    """One final client frame (clients mask every frame: RFC 6455, 5.3)."""
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 2**16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    mask = os.urandom(4)
    repeated = (mask * (length // 4 + 1))[:length]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        length, "big"
    )
    return head + mask + body


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + WEBSOCKET_GUID).digest()).decode()


class WebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(
        cls,
        address: str,
        port: int,
        path: str,
        token: str,
        tls: ssl.SSLContext | None,
        server_name: str,
    ) -> WebSocket:
        async def handshake() -> WebSocket:
            reader, writer = await asyncio.open_connection(
                address,
                port,
                ssl=tls,
                server_hostname=server_name if tls else None,
                limit=MAX_HANDSHAKE_BYTES,
            )
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                (
                    f"GET {path} HTTP/1.1\r\nHost: {server_name}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
                ).encode()
            )
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError):
                writer.close()
                raise Closed("the handshake's answer was cut or too long") from None
            lines = head.decode("latin-1").split("\r\n")
            status = lines[0].split(" ", 2)
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:] if line)
            }
            if len(status) < 2 or status[1] != "101":
                writer.close()
                raise Closed(f"handshake answered {lines[0][:80]!r}")
            if headers.get("sec-websocket-accept") != accept_for(key):
                writer.close()
                raise Closed("handshake answered with a wrong Sec-WebSocket-Accept")
            return cls(reader, writer)

        try:
            return await asyncio.wait_for(handshake(), HANDSHAKE_TIMEOUT)
        except TimeoutError:
            raise Closed("no handshake within 5 s") from None
        except (OSError, ssl.SSLError) as error:
            raise Closed(f"connect failed: {error}") from None

    def send(self, message: dict) -> None:
        self.writer.write(masked(0x1, json.dumps(message, separators=(",", ":")).encode()))

    async def receive(self) -> dict:
        """The next text message as JSON; pings answered on the way."""
        parts: list[bytes] = []
        while True:
            try:
                first, second = await asyncio.wait_for(self.reader.readexactly(2), SILENCE_LIMIT)
                length = second & 0x7F
                if second & 0x80:
                    raise Closed("the server masked a frame")
                if length == 126:
                    (length,) = struct.unpack("!H", await self.reader.readexactly(2))
                elif length == 127:
                    (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
                if length + sum(map(len, parts)) > MAX_MESSAGE_BYTES:
                    raise Closed(f"a message over {MAX_MESSAGE_BYTES} bytes")
                payload = await self.reader.readexactly(length)
            except TimeoutError:
                raise Closed(f"silent for {SILENCE_LIMIT:.0f} s") from None
            except (asyncio.IncompleteReadError, OSError, ssl.SSLError) as error:
                raise Closed(f"connection lost: {type(error).__name__}") from None
            opcode = first & 0x0F
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                # The close handshake answered (RFC 6455, 5.5.1): a service waits for it, up
                # to its close timeout, before it lets the connection go; a restart or a
                # drain would wait those seconds for the canary.
                self.writer.write(masked(0x8, payload[:2]))
                raise Closed(f"closed with {code}")
            if opcode == 0x9:
                self.writer.write(masked(0xA, payload))
                continue
            if opcode == 0xA:
                continue
            parts.append(payload)
            if first & 0x80:
                try:
                    return json.loads(b"".join(parts))
                except ValueError:
                    raise Closed("a message that is not JSON") from None

    def close(self) -> None:
        self.writer.close()


# The canary itself.


@dataclass
class Instance:
    """One worker instance, as the canary's subscriber there sees it."""

    server: str
    address: str
    port: int
    tls_name: str
    # Since when (monotonic) the subscription is confirmed, and the last sequence number
    # published before then: every acknowledged message after it is owed.
    subscribed_at: float | None = None
    owed_after: int = 0
    received: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    count: int = 0
    total: float = 0.0
    stalled: bool = False

    def observe(self, seconds: float) -> None:
        for index, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.buckets[index] += 1
        self.count += 1
        self.total += seconds


def failing_connection(event: str, fields: dict[str, str]) -> str:
    """Which connection a failure event is about: the publisher's, or one instance's."""
    return " ".join((event, *fields.values()))


class Canary:
    def __init__(self, args: argparse.Namespace, key: str) -> None:
        self.name = args.name
        self.channel = CHANNEL_PREFIX + args.name
        self.subject = f"wssfleet-canary.{args.name}"
        self.key = key
        self.ttl = args.token_ttl
        self.interval = args.interval
        self.stall_after = args.stall_after
        self.front_door = args.front_door
        self.server_name = args.server_name
        self.site_tls = ssl.create_default_context()
        for path in args.ca_file:
            self.site_tls.load_verify_locations(cafile=path)
        self.instance_tls = None
        if args.instance_ca:
            self.instance_tls = ssl.create_default_context(cafile=args.instance_ca)
        self.instances = [parse_instance(text) for text in args.instance]
        # Names this process's publishes: the service answers a publish whose id it has seen
        # (from this subject, within history_ttl) with the first one's offset and does not
        # publish it again, so a restarted canary counting from 1 would be acknowledged for
        # messages nobody receives.
        self.run_id = os.urandom(6).hex()
        self.sequence = 0
        self.sent: dict[int, float] = {}
        self.acknowledged: collections.OrderedDict[int, float] = collections.OrderedDict()
        self.published = 0
        # The last reason each connection (the publisher's, each instance's) failed for: a
        # connection refused every RECONNECT_DELAY is said once, not twice a second.
        self.failing: dict[str, str] = {}
        self.started = time.monotonic()
        self.last_acknowledged = self.started

    def failed(self, event: str, reason: str, **fields: str) -> None:
        """Log a failed connection when it fails for a new reason."""
        who = failing_connection(event, fields)
        if self.failing.get(who) != reason:
            self.failing[who] = reason
            log(event, reason=reason, **fields)

    def connected(self, event: str, **fields: str) -> None:
        """The connection that failed as ``event`` is up again: its next failure is said."""
        self.failing.pop(failing_connection(event, fields), None)

    def token(self) -> str:
        return mint(self.key, self.subject, self.ttl)

    async def publish_forever(self) -> None:
        """Publish through the front door every interval, over one connection at a time."""
        while True:
            try:
                socket = await WebSocket.open(
                    self.front_door, 443, "/ws", self.token(), self.site_tls, self.server_name
                )
            except Closed as error:
                self.failed("publisher_unconnected", str(error))
                await asyncio.sleep(RECONNECT_DELAY)
                continue
            self.connected("publisher_unconnected")
            log("publisher_connected")
            reading = asyncio.create_task(self.hear_acknowledgements(socket))
            try:
                await self.publish_on(socket, reading)
            except Closed as error:
                log("publisher_lost", reason=str(error))
            finally:
                reading.cancel()
                socket.close()
            await asyncio.sleep(RECONNECT_DELAY)

    async def publish_on(self, socket: WebSocket, reading: asyncio.Task) -> None:
        refreshed = time.monotonic()
        while not reading.done():
            self.sequence += 1
            self.sent[self.sequence] = time.monotonic()
            # Sent but never acknowledged (a connection lost on the way) is forgotten.
            for old in [s for s in self.sent if s < self.sequence - REMEMBERED]:
                del self.sent[old]
            message = {"seq": self.sequence, "run": self.run_id, "from": self.name}
            socket.send(
                {
                    "type": "publish",
                    "channel": self.channel,
                    "data": message,
                    "id": f"{self.run_id}.{self.sequence}",
                }
            )
            self.published += 1
            if time.monotonic() - refreshed > self.ttl / 2:
                socket.send({"type": "refresh", "token": self.token()})
                refreshed = time.monotonic()
            await asyncio.wait({reading}, timeout=self.interval)
        reading.result()

    async def hear_acknowledgements(self, socket: WebSocket) -> None:
        while True:
            message = await socket.receive()
            if message.get("type") == "published":
                sequence = self.sequence_of(message.get("id"))
                if sequence in self.sent:
                    now = time.monotonic()
                    self.acknowledged[sequence] = now
                    self.last_acknowledged = now
                    while len(self.acknowledged) > REMEMBERED:
                        self.acknowledged.popitem(last=False)
            elif message.get("type") == "error":
                log("publish_refused", reason=str(message.get("reason"))[:200])

    def sequence_of(self, request_id: object) -> int | None:
        """The sequence number of one of this process's publish ids, else None."""
        run, _, sequence = str(request_id).partition(".")
        return int(sequence) if run == self.run_id and sequence.isdigit() else None

    async def subscribe_forever(self, instance: Instance) -> None:
        """Hold a subscription on ``instance`` directly (not through HAProxy)."""
        scheme_tls = self.instance_tls
        while True:
            try:
                socket = await WebSocket.open(
                    instance.address,
                    instance.port,
                    "/ws",
                    self.token(),
                    scheme_tls,
                    instance.tls_name,
                )
            except Closed as error:
                self.failed("subscriber_unconnected", str(error), server=instance.server)
                await asyncio.sleep(RECONNECT_DELAY)
                continue
            delay = RECONNECT_DELAY
            try:
                await self.listen_on(socket, instance)
            except Closed as error:
                log("subscriber_lost", server=instance.server, reason=str(error))
                if str(error) in ("closed with 1012", "closed with 1001"):
                    delay = AWAY_AFTER_RESTART
            finally:
                instance.subscribed_at = None
                socket.close()
            await asyncio.sleep(delay)

    async def listen_on(self, socket: WebSocket, instance: Instance) -> None:
        socket.send({"type": "subscribe", "channel": self.channel})
        refreshed = time.monotonic()
        while True:
            message = await socket.receive()
            kind = message.get("type")
            if kind == "subscribed" and message.get("channel") == self.channel:
                instance.subscribed_at = time.monotonic()
                instance.owed_after = self.sequence
                instance.received = self.sequence
                self.connected("subscriber_unconnected", server=instance.server)
                log("subscribed", server=instance.server)
            elif kind == "message" and message.get("channel") == self.channel:
                self.heard(instance, message)
            elif kind == "error":
                log("subscriber_refused", server=instance.server, reason=message.get("reason"))
            if time.monotonic() - refreshed > self.ttl / 2:
                socket.send({"type": "refresh", "token": self.token()})
                refreshed = time.monotonic()

    def heard(self, instance: Instance, message: dict) -> None:
        data = message.get("data")
        # Only the canary's own: anyone else's message on its channel proves nothing.
        if message.get("from") != self.subject or not isinstance(data, dict):
            return
        # An earlier process's (in flight while this one started) says nothing of this one's.
        if data.get("run") != self.run_id:
            return
        sequence = data.get("seq")
        if not isinstance(sequence, int) or sequence <= instance.received:
            return
        instance.received = sequence
        sent = self.sent.get(sequence)
        if sent is not None:
            instance.observe(time.monotonic() - sent)

    def overdue(self, instance: Instance, now: float) -> float:
        """How long the oldest acknowledged message the instance owes has been owed."""
        if instance.subscribed_at is None:
            return 0.0
        after = max(instance.received, instance.owed_after)
        for sequence, acknowledged in self.acknowledged.items():
            if sequence > after:
                return max(0.0, now - max(acknowledged, instance.subscribed_at))
        return 0.0

    def watch(self) -> None:
        """Say in the journal when an instance starts and stops owing messages."""
        now = time.monotonic()
        for instance in self.instances:
            stalled = self.overdue(instance, now) > self.stall_after
            if stalled != instance.stalled:
                instance.stalled = stalled
                log("stalled" if stalled else "delivering", server=instance.server)

    def metrics(self) -> str:
        now = time.monotonic()
        lines = [
            "# HELP wssfleet_canary_delivery_seconds Time from the canary's publish to its "
            "receipt through each worker instance.",
            "# TYPE wssfleet_canary_delivery_seconds histogram",
        ]
        for instance in self.instances:
            label = f'server="{instance.server}"'
            for bound, count in zip(BUCKETS, instance.buckets, strict=True):
                lines.append(
                    f'wssfleet_canary_delivery_seconds_bucket{{{label},le="{bound}"}} {count}'
                )
            lines.append(
                f'wssfleet_canary_delivery_seconds_bucket{{{label},le="+Inf"}} {instance.count}'
            )
            lines.append(f"wssfleet_canary_delivery_seconds_sum{{{label}}} {instance.total:.6f}")
            lines.append(f"wssfleet_canary_delivery_seconds_count{{{label}}} {instance.count}")
        gauges = (
            (
                "wssfleet_canary_overdue_seconds",
                "How long the oldest acknowledged canary message an instance owes has been owed.",
                lambda instance: f"{self.overdue(instance, now):.3f}",
            ),
            (
                "wssfleet_canary_subscribed",
                "1 while the canary's subscription on the instance is confirmed.",
                lambda instance: "1" if instance.subscribed_at is not None else "0",
            ),
        )
        for name, text, value in gauges:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge"]
            lines += [f'{name}{{server="{i.server}"}} {value(i)}' for i in self.instances]
        lines += [
            "# HELP wssfleet_canary_since_acknowledged_seconds Since the front door last "
            "acknowledged a canary publish.",
            "# TYPE wssfleet_canary_since_acknowledged_seconds gauge",
            f"wssfleet_canary_since_acknowledged_seconds {now - self.last_acknowledged:.3f}",
            "# HELP wssfleet_canary_published_total Canary messages sent to the front door.",
            "# TYPE wssfleet_canary_published_total counter",
            f"wssfleet_canary_published_total {self.published}",
        ]
        return "\n".join(lines) + "\n"

    async def serve_metrics(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if path == b"/metrics":
                body, status = self.metrics().encode(), "200 OK"
            else:
                body, status = b"not found: /metrics\n", "404 Not Found"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.LimitOverrunError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()

    async def run(self, metrics_address: str, metrics_port: int) -> None:
        server = await asyncio.start_server(
            self.serve_metrics, metrics_address, metrics_port, limit=8192
        )
        log("started", instances=len(self.instances), channel=self.channel)
        tasks = [asyncio.create_task(self.publish_forever())]
        tasks += [asyncio.create_task(self.subscribe_forever(i)) for i in self.instances]
        async with server:
            while True:
                await asyncio.sleep(0.5)
                self.watch()
                for task in tasks:
                    if task.done():
                        task.result()


def parse_instance(text: str) -> Instance:
    """SERVER=ADDRESS:PORT[=TLS_NAME]: the name the metrics label it with, where it listens,
    and with internal TLS the name its certificate carries."""
    server, address_port, *tls_name = text.split("=")
    address, _, port = address_port.rpartition(":")
    return Instance(server, address, int(port), tls_name[0] if tls_name else address)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="canary.py", description=__doc__)
    parser.add_argument("--name", required=True, help="this master's name (the channel's)")
    parser.add_argument("--front-door", required=True, help="the address clients reach")
    parser.add_argument("--server-name", required=True, help="the site's name (TLS, Host)")
    parser.add_argument("--ca-file", action="append", default=[], help="roots to trust too")
    parser.add_argument("--instance", action="append", default=[], required=True)
    parser.add_argument("--instance-ca", default="", help="the internal CA (internal TLS)")
    parser.add_argument("--metrics", required=True, help="ADDRESS:PORT to serve /metrics on")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between publishes")
    parser.add_argument("--stall-after", type=float, default=5.0, help="overdue seconds to log")
    parser.add_argument("--token-ttl", type=int, default=3600, help="its tokens' lifetime, s")
    args = parser.parse_args(argv)
    key = os.environ.get("WSSFLEET_CANARY_KEY", "")
    if not key:
        parser.error("WSSFLEET_CANARY_KEY is not set: the canary has no key to sign with")
    metrics_address, _, metrics_port = args.metrics.rpartition(":")
    asyncio.run(Canary(args, key).run(metrics_address, int(metrics_port)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
