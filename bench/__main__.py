"""`make bench`: one service process on loopback, measured; prints a Markdown table.

Bounded by count, loopback only. The clients run in this process, on the same two cores as
the server, so the figures are a floor for the service, not a ceiling.

    python -m bench [--connections 2000] [--messages 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

from websockets.asyncio.client import connect

from wssfleet import auth

SECRET = "benchmark-secret-that-is-long-enough-0123456789"
ORIGIN = "https://bench.example"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def start_service(port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "WSSFLEET_JWT_SECRET": SECRET,
        "WSSFLEET_PORT": str(port),
        "WSSFLEET_ALLOWED_ORIGINS": ORIGIN,
        "WSSFLEET_MESSAGES_PER_SECOND": "100000",
        "WSSFLEET_SEND_QUEUE_MESSAGES": "10000",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "wssfleet", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.05)
    raise RuntimeError("the service did not start")


async def open_clients(url: str, count: int, token: str) -> list:
    clients = []
    for start in range(0, count, 100):
        batch = await asyncio.gather(
            *(
                connect(f"{url}?token={token}", origin=ORIGIN, compression=None, proxy=None)
                for _ in range(min(100, count - start))
            )
        )
        for ws in batch:
            await ws.recv()  # welcome
        clients.extend(batch)
    return clients


async def echo_rate(url: str, token: str, clients: int, messages: int) -> float:
    sockets = await open_clients(url, clients, token)
    frame = json.dumps({"type": "echo", "data": "x" * 220})  # ~256-byte frames
    per_client = messages // clients

    async def pump(ws):
        for _ in range(per_client):
            await ws.send(frame)
            await ws.recv()

    started = time.perf_counter()
    await asyncio.gather(*(pump(ws) for ws in sockets))
    elapsed = time.perf_counter() - started
    for ws in sockets:
        await ws.close()
    return per_client * clients / elapsed


async def fanout_rate(url: str, token: str, subscribers: int, messages: int) -> float:
    receivers = await open_clients(url + "/bench", subscribers, token)
    publisher = (await open_clients(url, 1, token))[0]
    frame = json.dumps({"type": "publish", "channel": "bench", "data": "x" * 200})

    async def drain(ws):
        for _ in range(messages):
            await ws.recv()

    started = time.perf_counter()
    draining = asyncio.gather(*(drain(ws) for ws in receivers))
    for _ in range(messages):
        await publisher.send(frame)
    await draining
    elapsed = time.perf_counter() - started
    for ws in [*receivers, publisher]:
        await ws.close()
    return messages * subscribers / elapsed


async def handshake_rate(url: str, token: str, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        async with connect(f"{url}?token={token}", origin=ORIGIN, proxy=None) as ws:
            await ws.recv()
    return count / (time.perf_counter() - started)


async def idle_memory(url: str, token: str, pid: int, count: int) -> tuple[float, int]:
    before = rss_kib(pid)
    sockets = await open_clients(url, count, token)
    await asyncio.sleep(1)
    per_connection = (rss_kib(pid) - before) / count
    for ws in sockets:
        await ws.close()
    return per_connection, rss_kib(pid)


async def main(arguments: argparse.Namespace) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = free_port()
    service = start_service(port)
    url = f"ws://127.0.0.1:{port}/ws"
    token = auth.mint(SECRET, "bench", 3600)
    try:
        echo = await echo_rate(url, token, 50, arguments.messages)
        fanout = await fanout_rate(url, token, 100, arguments.messages // 100)
        handshakes = await handshake_rate(url, token, 500)
        rows = [
            ("echo, 50 clients, 256 B frames", f"{echo:,.0f} msg/s"),
            ("fan-out, 1 publisher to 100 subscribers", f"{fanout:,.0f} deliveries/s"),
            ("handshakes with token check, one at a time", f"{handshakes:,.0f} /s"),
        ]
        per_connection, rss = await idle_memory(url, token, service.pid, arguments.connections)
        rows.append(
            (
                f"memory per idle connection ({arguments.connections:,} open)",
                f"{per_connection:.1f} KiB (process RSS {rss / 1024:.0f} MiB)",
            )
        )
    finally:
        service.terminate()
        service.wait(timeout=30)
    print(f"one wssfleet process on 127.0.0.1, {os.cpu_count()} cores shared with the clients\n")
    print("| measurement | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=20000)
    asyncio.run(main(parser.parse_args()))
