"""`make bench-loopback`: the service alone on loopback, measured; prints a Markdown table.

One process alone (in-memory history), then the message plane as deployed: processes joined by
a real redis-server that keeps history in an append-only file. Bounded by count and time,
loopback only. The clients run in this process, on the same two cores as the servers, so the
figures are a floor for the service, not a ceiling.

    python -m bench.loopback [--connections 1000] [--messages 20000] [--compare GIT-REVISION]

``--compare`` runs the same measures on the service as it was at that revision (checked out
into a temporary git worktree, removed afterwards) and prints both columns.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from websockets.asyncio.client import connect

from tests.processes import RedisServer, Replica, free_port, wait_for_port
from wssfleet import auth
from wssfleet_control.checkout import REPO

SECRET = "benchmark-secret-that-is-long-enough-0123456789"
ORIGIN = "https://bench.example"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# The bench's one subject publishes at full speed, with ids, to ever-new channels (each
# measure its own): the per-subject bounds a deployment keeps for hostile token holders would
# refuse it part way. Both sides get the same room. Idle clients hear a heartbeat every
# second, so that its cost shows in a short measure.
BENCH_SETTINGS = {
    "publish_ids_per_subject": 10_000_000,
    "publish_ids": 100_000_000,
    "history_channels": 100_000,
    "history_channels_per_subject": 100_000,
    "heartbeat_interval": 1,
    # The reconnect storm holds 2,500 clients of one subject on each process.
    "connections_per_subject": 100_000,
}


def settings_known_to(source: Path | None) -> dict[str, int]:
    """The bench's settings that a service revision has: an earlier one (``source``, its
    service/ directory) stops at a setting it does not know."""
    if source is None:
        return BENCH_SETTINGS
    code = "".join(path.read_text() for path in (source / "wssfleet").glob("*.py"))
    return {name: value for name, value in BENCH_SETTINGS.items() if f"{name}:" in code}


def service_env(port: int, redis_url: str, source: Path | None = None) -> dict[str, str]:
    """The environment of a measured service process: this one's, minus any WSSFLEET_
    setting, plus the bench's (no rate limit in the way of the load, and room for the ids of
    every message a measure publishes)."""
    settings = settings_known_to(source)
    return {
        **{key: value for key, value in os.environ.items() if not key.startswith("WSSFLEET_")},
        "WSSFLEET_JWT_SECRET": SECRET,
        "WSSFLEET_PORT": str(port),
        "WSSFLEET_ALLOWED_ORIGINS": ORIGIN,
        "WSSFLEET_MESSAGES_PER_SECOND": "100000",
        **{f"WSSFLEET_{name.upper()}": str(value) for name, value in settings.items()},
        "WSSFLEET_REDIS_URL": redis_url,
    }


def start_service(port: int, source: Path | None, redis_url: str = "") -> subprocess.Popen:
    """A service process; ``source`` is another revision's service/ directory to run."""
    env = service_env(port, redis_url, source)
    if source is not None:
        env["PYTHONPATH"] = str(source)
    process = subprocess.Popen(
        [sys.executable, "-m", "wssfleet", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=source or None,
    )
    wait_for_port(port)
    return process


@contextlib.contextmanager
def redis_server(replica: bool = False) -> Iterator[str]:
    """A redis-server as deployed (append-only file, everysec, the message plane's functions
    loaded), with one user for everything: an earlier revision (--compare) ran scripts, which
    the deployed rules refuse. With ``replica``, a second one replicating it, as a fleet of two
    masters has (publishes then wait for it). Yields the primary's URL."""
    with tempfile.TemporaryDirectory(prefix="wssfleet-bench-redis-") as directory:
        server = RedisServer(Path(directory), deployed_users=False)
        server.start()
        follower = None
        try:
            if replica:
                (Path(directory) / "replica").mkdir()
                follower = Replica(Path(directory) / "replica", server, deployed_users=False)
                follower.start()
                wait_until_in_step(server)
            yield server.url
        finally:
            if follower is not None:
                follower.stop()
            server.stop()


def wait_until_in_step(primary: RedisServer, seconds: float = 30) -> None:
    """Until the primary counts one online replica."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        info = primary.cli("INFO", "replication")
        if info.get("connected_slaves") == 1 and info.get("slave0", {}).get("state") == "online":
            return
        time.sleep(0.1)
    raise RuntimeError(f"the bench's Redis replica was not in step within {seconds} s")


@contextlib.contextmanager
def services(count: int, source: Path | None, redis_url: str) -> Iterator[list[int]]:
    """``count`` service processes on one Redis; yields their ports once each is on the bus."""
    ports = [free_port() for _ in range(count)]
    processes = [start_service(port, source, redis_url) for port in ports]
    try:
        for port in ports:
            deadline = time.monotonic() + 10
            while health(port).get("redis") != "connected" and time.monotonic() < deadline:
                time.sleep(0.05)
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
        return json.loads(reply.read())


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
            if "/ws/" in url and ANSWERS_SUBSCRIBE:
                # Messages published before this answer are not this client's to receive.
                await ws.recv()
        clients.extend(batch)
    return clients


# Whether the measured service answers a subscription (earlier revisions did not).
ANSWERS_SUBSCRIBE = True


async def answers_subscribe(url: str, token: str) -> bool:
    async with connect(f"{url}/probe?token={token}", origin=ORIGIN, proxy=None) as ws:
        await ws.recv()
        try:
            return '"subscribed"' in await asyncio.wait_for(ws.recv(), 2)
        except TimeoutError:
            return False


async def receive_messages(ws, count: int) -> None:
    """Read ``count`` message frames, skipping any other."""
    received = 0
    while received < count:
        if '"type":"message"' in await ws.recv():
            received += 1


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


async def fanout_rate(urls: list[str], token: str, subscribers: int, messages: int) -> float:
    """Deliveries a second from one publisher (on the first process) to subscribers spread
    over the processes."""
    receivers = []
    for number, url in enumerate(urls):
        share = subscribers // len(urls) + (number < subscribers % len(urls))
        receivers += await open_clients(url + "/bench", share, token)
    publisher = (await open_clients(urls[0], 1, token))[0]
    frame = json.dumps({"type": "publish", "channel": "bench", "data": "x" * 200})
    started = time.perf_counter()
    draining = asyncio.gather(*(receive_messages(ws, messages) for ws in receivers))
    for _ in range(messages):
        await publisher.send(frame)
    await draining
    elapsed = time.perf_counter() - started
    for ws in [*receivers, publisher]:
        await ws.close()
    return messages * subscribers / elapsed


async def fanout_latency(
    urls: list[str], token: str, subscribers: int, rate: float, seconds: float
) -> tuple[float, float]:
    """Publish → receive p50 and p99 in ms at ``rate`` messages a second to subscribers spread
    over the processes (the publisher on the first)."""
    receivers = []
    for number, url in enumerate(urls):
        share = subscribers // len(urls) + (number < subscribers % len(urls))
        receivers += await open_clients(url + "/latency", share, token)
    publisher = (await open_clients(urls[0], 1, token))[0]
    samples: list[float] = []

    async def listen(ws):
        while True:
            text = await ws.recv()
            if '"type":"message"' in text:
                samples.append(time.perf_counter() - json.loads(text)["data"])

    listening = [asyncio.create_task(listen(ws)) for ws in receivers]
    started = time.perf_counter()
    for number in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, started + number / rate - time.perf_counter()))
        sent = time.perf_counter()
        await publisher.send(json.dumps({"type": "publish", "channel": "latency", "data": sent}))
    await asyncio.sleep(2)
    for task in listening:
        task.cancel()
    await asyncio.gather(*listening, return_exceptions=True)
    for ws in [*receivers, publisher]:
        await ws.close()
    centiles = statistics.quantiles(samples, n=100)
    return centiles[49] * 1000, centiles[98] * 1000


async def bus_share(urls: list[str], ports: list[int], token: str, messages: int) -> list:
    """Processes serving disjoint channels (one each): the bus messages each handled, while
    ``messages`` are published to every channel."""
    listeners = [
        (await open_clients(f"{url}/share-{number}", 1, token))[0]
        for number, url in enumerate(urls)
    ]
    before = [health(port).get("bus_messages") for port in ports]
    publisher = (await open_clients(urls[0], 1, token))[0]
    for number in range(len(urls)):
        for _ in range(messages):
            channel = f"share-{number}"
            await publisher.send(json.dumps({"type": "publish", "channel": channel, "data": 1}))
    await asyncio.gather(*(receive_messages(ws, messages) for ws in listeners))
    after = [health(port).get("bus_messages") for port in ports]
    for ws in [*listeners, publisher]:
        await ws.close()
    if None in before or None in after:
        return []
    return [later - earlier for earlier, later in zip(before, after, strict=True)]


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


async def measure(source: Path | None, arguments: argparse.Namespace) -> dict[str, str]:
    """Every measure on the service found in ``source`` (None: this checkout's)."""
    token = auth.mint(SECRET, "bench", 3600, subscribe=["*"], publish=["*"])
    results: dict[str, str] = {}
    port = free_port()
    alone = start_service(port, source)
    url = f"ws://127.0.0.1:{port}/ws"
    global ANSWERS_SUBSCRIBE
    try:
        ANSWERS_SUBSCRIBE = await answers_subscribe(url, token)
        echo = await echo_rate(url, token, 50, arguments.messages)
        results["echo, 50 clients, 256 B frames"] = f"{echo:,.0f} msg/s"
        fanout = await fanout_rate([url], token, 100, arguments.messages // 100)
        results["fan-out, 1 process alone, 1 publisher to 100 subscribers"] = (
            f"{fanout:,.0f} deliveries/s"
        )
        handshakes = await handshake_rate(url, token, 500)
        results["handshakes with token check, one at a time"] = f"{handshakes:,.0f} /s"
        per_connection, rss = await idle_memory(url, token, alone.pid, arguments.connections)
        results[f"memory per idle connection ({arguments.connections:,} open)"] = (
            f"{per_connection:.1f} KiB (process RSS {rss / 1024:.0f} MiB)"
        )
    finally:
        alone.terminate()
        alone.wait(timeout=30)
    with redis_server() as redis_url:
        with services(2, source, redis_url) as ports:
            urls = [f"ws://127.0.0.1:{port}/ws" for port in ports]
            fanout = await fanout_rate(urls, token, 100, arguments.messages // 100)
            results["fan-out through Redis with history, 2 processes, 100 subscribers"] = (
                f"{fanout:,.0f} deliveries/s"
            )
            p50, p99 = await fanout_latency(urls, token, 1000, 5, 10)
            results["publish → receive, 1,000 subscribers on 2 processes, 5 msg/s: p50 / p99"] = (
                f"{p50:.0f} / {p99:.0f} ms"
            )
        with services(4, source, redis_url) as ports:
            urls = [f"ws://127.0.0.1:{port}/ws" for port in ports]
            shares = await bus_share(urls, ports, token, 500)
            results["bus messages per process, 4 processes on 4 channels, 500 each"] = (
                (" / ".join(map(str, shares)) + " of 2,000") if shares else "not counted"
            )
    return results


@contextlib.contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """The service as it was at ``revision``, in a temporary git worktree."""
    repo = REPO
    directory = Path(tempfile.mkdtemp(prefix="wssfleet-bench-"))
    subprocess.run(
        ["git", "-C", str(repo), "worktree", "add", "--detach", str(directory / "tree"), revision],
        check=True,
        capture_output=True,
    )
    try:
        tree = directory / "tree"
        yield tree / "service" if (tree / "service").is_dir() else tree
    finally:
        subprocess.run(
            ["git", "-C", str(repo), "worktree", "remove", "--force", str(directory / "tree")],
            check=True,
            capture_output=True,
        )
        shutil.rmtree(directory, ignore_errors=True)


async def main(arguments: argparse.Namespace) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    columns = {"this checkout": await measure(None, arguments)}
    if arguments.compare:
        with worktree(arguments.compare) as source:
            columns[arguments.compare] = await measure(source, arguments)
    print(f"wssfleet on 127.0.0.1, {os.cpu_count()} cores shared with the clients\n")
    print("| measurement | " + " | ".join(columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for name in columns["this checkout"]:
        values = [column.get(name, "—") for column in columns.values()]
        print(f"| {name} | " + " | ".join(values) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.loopback", description=__doc__)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--compare", metavar="GIT-REVISION", help="also measure this revision")
    asyncio.run(main(parser.parse_args()))
