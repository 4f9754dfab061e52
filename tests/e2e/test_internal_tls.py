"""internal_tls: what crosses the network between the hosts. Every frame on the lab's bridge is
captured while a client connects through HAProxy with a token and publishes a message; without
internal_tls both are there to read, with it neither is."""

from __future__ import annotations

import json
import shlex
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.config import BRIDGE
from tests.e2e.conftest import run
from tests.frames import next_frame
from tests.lab_fleet import deploy, derived_inventory
from tests.unit.helpers import wait_until
from wssfleet_control import commands
from wssfleet_control.hostside.layout import HAPROXY_PEERS_PORT, HELPERS

pytestmark = pytest.mark.timeout(600)

# Every protocol (ETH_P_ALL), as the kernel hands frames to a packet socket.
ALL_PROTOCOLS = 0x0003


class Capture:
    """Every frame between the lab's hosts, kept in memory while it runs (a few MB at most).
    Frames one host sends another are forwarded by the bridge from port to port without
    reaching the bridge's own interface, so they are read on its ports: each host's veth."""

    def __init__(self) -> None:
        self.sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ALL_PROTOCOLS))
        self.sniffer.settimeout(0.2)
        ports = Path(f"/sys/class/net/{BRIDGE}/brif")
        self.ports = {port.name for port in ports.iterdir()}
        assert self.ports, f"{BRIDGE} has no ports"
        self.frames: list[bytes] = []
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        while self.running:
            try:
                frame, (interface, *_) = self.sniffer.recvfrom(65536)
            except TimeoutError:
                continue
            if interface in self.ports:
                self.frames.append(frame)

    def __enter__(self) -> Capture:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()
        self.sniffer.close()

    def holds(self, text: str) -> bool:
        needle = text.encode()
        return any(needle in frame for frame in self.frames)

    def tcp_frames(self, port: int) -> list[bytes]:
        """IPv4 TCP frames to or from ``port``."""
        found = []
        for frame in self.frames:
            if frame[12:14] != b"\x08\x00" or frame[23] != 6:
                continue
            header = 14 + (frame[14] & 0x0F) * 4
            ports = (
                int.from_bytes(frame[header : header + 2]),
                int.from_bytes(frame[header + 2 : header + 4]),
            )
            if port in ports:
                found.append(frame)
        return found

    def tcp_bytes_to(self, port: int) -> int:
        """Bytes of IPv4 TCP frames to or from ``port`` (the check that traffic was seen)."""
        return sum(len(frame) for frame in self.tcp_frames(port))


def exchange(lab, marker: str) -> str:
    """A subscriber and a publisher through HAProxy; the publisher's token, once the
    subscriber has the message that carries ``marker``."""
    subject = f"capture-{uuid.uuid4().hex[:8]}"
    token = lab.token(subject)

    async def scenario() -> None:
        listener = await lab.connect("/ws/captured", subject="listener")
        publisher = await lab.connect_with_token(token)
        try:
            for ws in (listener, publisher):
                await next_frame(ws, 10)
            await next_frame(listener, 10)  # subscribed
            frame = {"type": "publish", "channel": "captured", "data": marker, "id": 1}
            await publisher.send(json.dumps(frame))
            while True:
                heard = await next_frame(listener, 10)
                if heard.get("data") == marker:
                    return
        finally:
            await listener.close()
            await publisher.close()

    run(scenario())
    return token


@dataclass
class Seen:
    token: bool
    body: bool
    redis_bytes: int
    # The client's admission counter, as one master's HAProxy sends it to the other's
    # (peers): its key is the client's address, IPv4-mapped.
    counter_key: bool
    peers_bytes: int


def captured(lab) -> Seen:
    """What crossed the bridge readable while a client connected with a fresh token and
    published a message."""
    marker = f"body-{uuid.uuid4().hex}"
    with Capture() as capture:
        token = exchange(lab, marker)
        time.sleep(1.5)  # the peers push their updates within a second
    client = socket.inet_aton(lab.described["gateway"])
    peers = capture.tcp_frames(HAPROXY_PEERS_PORT)
    return Seen(
        token=capture.holds(token),
        body=capture.holds(marker),
        redis_bytes=capture.tcp_bytes_to(lab.fleet.settings.redis_port),
        counter_key=any(b"\xff\xff" + client in frame for frame in peers),
        peers_bytes=sum(len(frame) for frame in peers),
    )


SHOW_PEERS = shlex.quote(
    f"import sys; sys.path.insert(0, {HELPERS!r}); import haproxy_runtime; "
    "print(haproxy_runtime.ask('show peers'))"
)


def peers_established(lab) -> list[str]:
    """Each master's connected (ESTA) peers, once every master has all the others."""
    masters = lab.fleet.masters
    connected = []
    for master in masters:
        answer = lab.on(master.name, f"python3 -c {SHOW_PEERS}").stdout
        connected += [
            f"{master.name} -> {line.split()[1]}"
            for line in answer.splitlines()
            if "(remote," in line and "last_status=ESTA" in line
        ]
    return connected if len(connected) == len(masters) * (len(masters) - 1) else []


def promotable_replicas(lab) -> int:
    """Redis replicas in step whose replica-priority lets the Sentinels promote them."""
    count = 0
    for node in lab.fleet.redis_nodes:
        info = lab.on(node.name, commands.redis_replication(tls=True), timeout=10).stdout
        fields = dict(line.strip().split(":", 1) for line in info.splitlines() if ":" in line)
        count += fields.get("role") == "slave" and fields.get("slave_priority") == "100"
    return count


def test_with_internal_tls_no_token_or_message_crosses_the_network_readable(lab, tmp_path):
    # Without it (a private network): the capture reads each, which shows it can.
    seen = captured(lab)
    assert seen.token and seen.body and seen.redis_bytes > 0
    assert seen.counter_key, f"the peers' counter was not read ({seen.peers_bytes} bytes seen)"
    encrypted = derived_inventory(tmp_path, internal_tls=True)
    try:
        code, _, log = deploy(encrypted)
        assert code == 0, log[-3000:]
        # The masters' HAProxy peers, each presenting a master's certificate, reconnected.
        wait_until(lambda: peers_established(lab), 30, "every master's peers connected")
        seen = captured(lab)
        assert seen.redis_bytes > 0, "no traffic to Redis was captured"
        assert seen.peers_bytes > 0, "no traffic between the peers was captured"
        assert not seen.token, "a token crossed the bridge in clear"
        assert not seen.body, "a message body crossed the bridge in clear"
        assert not seen.counter_key, "the peers' counters crossed the bridge in clear"
        # The promotion guards speak TLS to their Redis and to the Sentinels: each replica
        # in step is promotable again after Redis restarted with TLS.
        wait_until(lambda: promotable_replicas(lab) == len(lab.fleet.redis_nodes) - 1, 30,
                   "the guards raised the replicas' priority over TLS")  # fmt: skip
    finally:
        code, _, log = deploy()
        assert code == 0, log[-3000:]
