"""`make bench`: wssfleet's service against its peer, the seeds' Node `ws` stack, side by side.

Each side runs as deployed, scaled down to loopback: two service processes behind one HAProxy
that terminates TLS, joined by one redis-server keeping history in an append-only file. The
peer (bench/peer/server.js) speaks the same protocol with the same checks and runs wssfleet's
own store-and-publish function, so both do the same work per message. One load generator
(bench/peer/load.js, Node `ws` clients) drives both. Rounds alternate which side goes first;
the table gives each measure's median and range over the rounds, and the ratio of the medians
oriented so that 1.0 or more means wssfleet does at least as well.

CPU figures are the service processes' own CPU time (user + system, from /proc) over exactly
the measured work, divided by what was done; HAProxy, Redis and the load generator share the
same two cores and are not counted. Loopback only, at most 1,000 clients a measure but the
reconnect storm's 5,000 (from 20 loopback source addresses), each measure under a minute.

    python -m bench [--rounds 5]
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.capacity import (
    MASTER_SOURCES,
    WINDOW_SECONDS,
    capacity_connections,
    measure_capacity,
    measure_master,
)
from bench.loopback import (
    BENCH_SETTINGS,
    ORIGIN,
    SECRET,
    redis_server,
    rss_kib,
    service_env,
)
from tests.processes import free_port, wait_for_port
from wssfleet import auth
from wssfleet.config import ClientPolicy, ServiceConfig

PEER = Path(__file__).resolve().parent / "peer"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SUBSCRIBERS = 1000
IDLE_CONNECTIONS = 1000
CONNECTIONS_OPENED = 500
ECHO_SECONDS = 5
# How long the idle clients hear heartbeats while the service's CPU is counted.
HEARTBEAT_SECONDS = 10
# Publishers in the throughput measure, each with its own channel and one subscriber on it.
PAIRS = 40
PUBLISH_SECONDS = 5
FANOUT_SECONDS = 10
# Echo and fan-out runs a round, on the same processes: the round's figure is their median.
# With the machine saturated, the rate and latency rows swing with how the two cores are
# shared out between HAProxy, the load generator and the service; one run a round left their
# medians to chance.
RUNS_A_ROUND = 3
# The reconnect storm: subscribers closed with 1012 at once by every service process, coming
# back through HAProxy from this many loopback source addresses, on this many channels.
STORM_CLIENTS = 5000
STORM_SOURCES = [f"127.0.0.{host}" for host in range(2, 22)]
STORM_CHANNELS = 50
# Load generator threads the storm's clients are shared out among (one a core).
STORM_THREADS = os.cpu_count() or 1
# What both sides' /internal/shed asks for (wssfleet's internal_key).
INTERNAL_KEY = "the-bench-internal-key-0123456789abcdef"


@dataclass(frozen=True)
class Measure:
    key: str
    name: str
    unit: str
    higher_is_better: bool
    digits: int = 0


FANOUT = "fan-out, 1,000 subscribers"
# The deployed heartbeat interval: an idle browser client sends one path probe per interval.
PRODUCTION_HEARTBEAT = ServiceConfig.model_fields["heartbeat_interval"].default
CAPACITY = capacity_connections()
MEASURES = [
    Measure("echo_rate", "echo through HAProxy TLS, 50 clients, 256 B", "msg/s", True),
    Measure("echo_cpu", "service CPU per echo message", "µs", False, 1),
    Measure("light_p50", f"{FANOUT}, 10 msg/s: publish → receive p50", "ms", False, 1),
    Measure("light_p99", f"{FANOUT}, 10 msg/s: p99", "ms", False, 1),
    Measure("saturated_p50", f"{FANOUT}, 100 msg/s (machine saturated): p50", "ms", False, 1),
    Measure("saturated_p99", f"{FANOUT}, 100 msg/s (machine saturated): p99", "ms", False, 1),
    Measure("delivery_cpu", "service CPU per fan-out delivery (at 100 msg/s)", "µs", False, 1),
    Measure("idle_memory", "memory per idle connection (1,000 open)", "KiB", False, 1),
    Measure(
        "heartbeat_cpu", "service CPU per heartbeat (1,000 idle, one a second each)", "µs", False, 1
    ),
    Measure(
        "probe_cpu",
        "service CPU per path probe (1,000 idle, an empty frame a second each)",
        "µs",
        False,
        1,
    ),
    Measure("connect_cpu", "service CPU per connection opened (upgrade, JWT)", "µs", False),
    Measure(
        "storm_seconds",
        f"reconnect storm: {STORM_CLIENTS:,} subscribers closed with 1012 at once, "
        f"{len(STORM_SOURCES)} sources: all subscribed again after",
        "s",
        False,
        2,
    ),
    Measure("storm_cpu", "reconnect storm: service CPU per client back", "µs", False),
    Measure(
        "capacity_open",
        f"capacity: idle connections one process holds (of {CAPACITY:,}, direct on loopback)",
        "",
        True,
    ),
    Measure(
        "capacity_memory", f"capacity: memory per connection ({CAPACITY:,} open)", "KiB", False, 1
    ),
    Measure(
        "capacity_round_cpu",
        f"capacity: CPU per heartbeat round ({CAPACITY:,} connections, one heartbeat each)",
        "ms",
        False,
        1,
    ),
    Measure(
        "capacity_probe_share",
        f"capacity: path probes at {CAPACITY:,} idle connections, one each per "
        f"{PRODUCTION_HEARTBEAT} s: share of one core",
        "%",
        False,
        2,
    ),
    *(
        Measure(
            f"publish_{count}",
            f"publish throughput, {PAIRS} publishers, {count} {noun}",
            "msg/s",
            True,
        )
        for count, noun in ((1, "process"), (2, "processes"), (4, "processes"))
    ),
    Measure(
        "publish_ack_p50",
        f"publish acknowledgement, {PAIRS} publishers, 1 process: p50",
        "ms",
        False,
        2,
    ),
    Measure("publish_ack_p99", "publish acknowledgement: p99", "ms", False, 2),
    Measure(
        "replica_publish",
        f"with a Redis replica (wssfleet waits for it, the peer has none to wait for): publish "
        f"throughput, {PAIRS} publishers, 1 process",
        "msg/s",
        True,
    ),
    Measure("replica_ack_p50", "with a Redis replica: publish acknowledgement p50", "ms", False, 2),
    Measure("replica_ack_p99", "with a Redis replica: publish acknowledgement p99", "ms", False, 2),
]
# Typography of the table, spelled out so that no one mistakes them for ASCII.
TIMES, EN_DASH = "\u00d7", "\u2013"


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
            return json.loads(reply.read()).get("redis") == "connected"
    except OSError:
        return False


def wssfleet_command(port: int, redis_url: str) -> tuple[list[str], dict[str, str]]:
    env = {**service_env(port, redis_url), "WSSFLEET_INTERNAL_KEY": INTERNAL_KEY}
    return [sys.executable, "-m", "wssfleet", "serve"], env


def publish_limits() -> list[int]:
    """STORE_AND_PUBLISH's bounds as a wssfleet process with the bench's settings passes them."""
    return [
        ClientPolicy().history_max_bytes,
        BENCH_SETTINGS["history_channels"],
        BENCH_SETTINGS["history_channels_per_subject"],
        BENCH_SETTINGS["publish_ids_per_subject"],
    ]


def peer_command(port: int, redis_url: str) -> tuple[list[str], dict[str, str]]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PEER_JWT_SECRET": SECRET,
        "PEER_PORT": str(port),
        "PEER_ALLOWED_ORIGINS": ORIGIN,
        "PEER_MESSAGES_PER_SECOND": "100000",
        "PEER_REDIS_URL": redis_url,
        "PEER_PUBLISH_LIMITS": json.dumps(publish_limits()),
        "PEER_PUBLISH_IDS": str(BENCH_SETTINGS["publish_ids"]),
        "PEER_HEARTBEAT_INTERVAL": str(BENCH_SETTINGS["heartbeat_interval"]),
        "PEER_INTERNAL_KEY": INTERNAL_KEY,
    }
    return ["node", str(PEER / "server.js")], env


SIDES: dict[str, Callable[[int, str], tuple[list[str], dict[str, str]]]] = {
    "wssfleet": wssfleet_command,
    "Node ws": peer_command,
}


def wait_for_redis(port: int, side: str) -> None:
    deadline = time.monotonic() + 10
    while not healthy(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{side} on port {port} did not reach Redis")
        time.sleep(0.05)


@contextlib.contextmanager
def processes(side: str, redis_url: str, count: int = 2) -> Iterator[tuple[list[int], list[int]]]:
    """``count`` service processes of ``side``; yields their pids and ports once all are on
    Redis."""
    ports = [free_port() for _ in range(count)]
    started = []
    try:
        for port in ports:
            command, env = SIDES[side](port, redis_url)
            started.append(
                subprocess.Popen(
                    command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        for port in ports:
            wait_for_port(port)
            wait_for_redis(port, side)
        yield [process.pid for process in started], ports
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.wait(timeout=30)


@contextlib.contextmanager
def tls_material() -> Iterator[Path]:
    """A directory with a self-signed certificate for 127.0.0.1 (ca.pem) and HAProxy's
    certificate-and-key file (site.pem)."""
    with tempfile.TemporaryDirectory(prefix="wssfleet-bench-tls-") as name:
        directory = Path(name)
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                "-addext", "subjectAltName=IP:127.0.0.1",
                "-keyout", str(directory / "key.pem"), "-out", str(directory / "ca.pem"),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        (directory / "site.pem").write_text(
            (directory / "ca.pem").read_text() + (directory / "key.pem").read_text()
        )
        yield directory


HAPROXY_CONFIG = """\
global
    # Two descriptors a connection within this machine's 20,000 (the storm holds 5,000).
    maxconn 9000
    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets
defaults
    mode http
    option http-server-close
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
frontend public
    bind 127.0.0.1:{port} ssl crt {pem} alpn http/1.1
    default_backend workers
backend workers
    balance leastconn
{servers}
"""


@contextlib.contextmanager
def haproxy(tls: Path, backends: list[int]) -> Iterator[int]:
    """HAProxy terminating TLS on loopback in front of ``backends``; yields its port."""
    binary = shutil.which("haproxy")
    if binary is None:
        raise SystemExit("haproxy is not installed: run 'make tools'")
    port = free_port()
    servers = "\n".join(
        f"    server s{number} 127.0.0.1:{backend}" for number, backend in enumerate(backends)
    )
    config = tls / f"haproxy-{port}.cfg"
    config.write_text(HAPROXY_CONFIG.format(port=port, pem=tls / "site.pem", servers=servers))
    process = subprocess.Popen(
        [binary, "-f", str(config), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


class Load:
    """One run of the load generator: open its clients, run the measured work, close."""

    def __init__(self, job: dict) -> None:
        self.process = subprocess.Popen(
            ["node", str(PEER / "load.js"), json.dumps(job)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._expect("ready")

    def _expect(self, key: str) -> dict:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        answer = json.loads(line) if line else {"error": "the load generator exited"}
        if key not in answer:
            self.process.kill()
            raise RuntimeError(f"load generator: {answer.get('error', answer)}")
        return answer[key]

    def _say(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def run(self) -> dict:
        self._say("go")
        return self._expect("done")

    def close(self) -> None:
        self._say("close")
        self.process.wait(timeout=60)


def run_measured(job: dict, pids: list[int]) -> tuple[dict, float]:
    """Run one load job; what it reports, and the CPU seconds ``pids`` spent on its measured
    work (not on opening or closing its clients)."""
    load = Load(job)
    before = cpu_seconds(pids)
    done = load.run()
    spent = cpu_seconds(pids) - before
    load.close()
    return done, spent


def measure_side(side: str, redis_url: str, tls: Path, only: str | None) -> dict[str, float]:
    """One round of every measure on ``side`` (or ``only`` the storm's or the capacity's), on
    fresh processes."""
    token = auth.mint(SECRET, "bench", 3600, subscribe=["*"], publish=["*"])
    if only == "storm":
        return reconnect_storm(side, redis_url, tls, token)
    if only == "capacity":
        return measure_capacity(side, redis_url, tls, token)
    if only == "publish":
        return measure_publishing(side, redis_url, tls, token)
    results: dict[str, float] = {}
    with processes(side, redis_url) as (pids, ports), haproxy(tls, ports) as port:
        base = {"url": f"wss://127.0.0.1:{port}", "token": token, "origin": ORIGIN,
                "ca": str(tls / "ca.pem")}  # fmt: skip

        memory_before = sum(rss_kib(pid) for pid in pids)
        idle = Load({**base, "mode": "idle", "clients": IDLE_CONNECTIONS})
        time.sleep(1)
        memory = (sum(rss_kib(pid) for pid in pids) - memory_before) / IDLE_CONNECTIONS
        before = cpu_seconds(pids)
        time.sleep(HEARTBEAT_SECONDS)
        heartbeats = IDLE_CONNECTIONS * HEARTBEAT_SECONDS / BENCH_SETTINGS["heartbeat_interval"]
        idle_cpu = cpu_seconds(pids) - before
        results["heartbeat_cpu"] = idle_cpu / heartbeats * 1e6
        idle.close()

        # The browser client's path probes on top of the same idle connections' heartbeats.
        probe = {**base, "mode": "probe", "clients": IDLE_CONNECTIONS, "interval": 1,
                 "seconds": HEARTBEAT_SECONDS}  # fmt: skip
        done, cpu = run_measured(probe, pids)
        results["probe_cpu"] = max(0.0, cpu - idle_cpu * done["seconds"] / HEARTBEAT_SECONDS)
        results["probe_cpu"] *= 1e6 / done["sent"]

        echo = {**base, "mode": "echo", "clients": 50, "bytes": 256, "seconds": ECHO_SECONDS}
        runs = [run_measured(echo, pids) for _ in range(RUNS_A_ROUND)]
        results["echo_rate"] = statistics.median(
            done["messages"] / done["seconds"] for done, _ in runs
        )
        results["echo_cpu"] = statistics.median(cpu / done["messages"] * 1e6 for done, cpu in runs)

        for rate, load in ((10, "light"), (100, "saturated")):
            fanout = {**base, "mode": "fanout", "subscribers": SUBSCRIBERS, "rate": rate,
                      "seconds": FANOUT_SECONDS}  # fmt: skip
            runs = [run_measured(fanout, pids) for _ in range(RUNS_A_ROUND)]
            for done, _ in runs:
                if done["deliveries"] != done["expected"]:
                    raise RuntimeError(
                        f"{side}: {done['deliveries']} of {done['expected']} deliveries arrived"
                    )
            results[f"{load}_p50"] = statistics.median(done["p50_ms"] for done, _ in runs)
            results[f"{load}_p99"] = statistics.median(done["p99_ms"] for done, _ in runs)
        results["delivery_cpu"] = statistics.median(
            cpu / done["deliveries"] * 1e6 for done, cpu in runs
        )
        results["idle_memory"] = memory

        done, cpu = run_measured({**base, "mode": "connect", "count": CONNECTIONS_OPENED}, pids)
        results["connect_cpu"] = cpu / done["connections"] * 1e6
    results.update(measure_publishing(side, redis_url, tls, token))
    results.update(reconnect_storm(side, redis_url, tls, token))
    results.update(measure_capacity(side, redis_url, tls, token))
    return results


def reconnect_storm(side: str, redis_url: str, tls: Path, token: str) -> dict[str, float]:
    """Every subscriber closed with 1012 at once and back through HAProxy: how long until all
    are subscribed again, and the service CPU that took per client."""
    with processes(side, redis_url) as (pids, ports), haproxy(tls, ports) as port:
        job = {"url": f"wss://127.0.0.1:{port}", "token": token, "origin": ORIGIN,
               "ca": str(tls / "ca.pem"), "mode": "storm", "clients": STORM_CLIENTS,
               "channels": STORM_CHANNELS, "sources": STORM_SOURCES, "key": INTERNAL_KEY,
               "threads": STORM_THREADS,
               "shed": [f"http://127.0.0.1:{service}/internal/shed?count={STORM_CLIENTS}"
                        f"&seconds=0.1" for service in ports]}  # fmt: skip
        done, cpu = run_measured(job, pids)
    if done["back"] != STORM_CLIENTS or done["closes"] != {"1012": STORM_CLIENTS}:
        raise RuntimeError(
            f"{side}: storm closed {done['closes']} and {done['back']} of {STORM_CLIENTS} came "
            "back within 120 s"
        )
    return {"storm_seconds": done["seconds"], "storm_cpu": cpu / STORM_CLIENTS * 1e6}


def measure_publishing(side: str, redis_url: str, tls: Path, token: str) -> dict[str, float]:
    """Publish throughput on 1, 2 and 4 processes, and with one process how long a publish
    waits for its acknowledgement: on the bench's Redis, then on a primary with a replica,
    as a fleet of two masters runs (wssfleet then waits for the replica; the peer does not)."""
    results: dict[str, float] = {}
    for count in (1, 2, 4):
        done = publish_throughput(side, redis_url, tls, token, count)
        results[f"publish_{count}"] = done["published"] / done["seconds"]
        if count == 1:
            results["publish_ack_p50"] = done["ack_p50_ms"]
            results["publish_ack_p99"] = done["ack_p99_ms"]
    with redis_server(replica=True) as replicated_url:
        # wssfleet's processes count a primary's replicas every second: past the first count.
        done = publish_throughput(side, replicated_url, tls, token, 1, settle=1.5)
    results["replica_publish"] = done["published"] / done["seconds"]
    results["replica_ack_p50"] = done["ack_p50_ms"]
    results["replica_ack_p99"] = done["ack_p99_ms"]
    return results


def publish_throughput(
    side: str, redis_url: str, tls: Path, token: str, count: int, settle: float = 0.0
) -> dict:
    """Messages stored and delivered a second by ``count`` processes (channels routed to the
    processes that serve them), and how long each publish waited for its answer."""
    with processes(side, redis_url, count) as (_, ports), haproxy(tls, ports) as port:
        load = Load(
            {"url": f"wss://127.0.0.1:{port}", "token": token, "origin": ORIGIN,
             "ca": str(tls / "ca.pem"), "mode": "publish", "pairs": PAIRS,
             "seconds": PUBLISH_SECONDS}
        )  # fmt: skip
        time.sleep(settle)
        done = load.run()
        load.close()
    if done["delivered"] != done["published"]:
        raise RuntimeError(f"{side}: {done['delivered']} of {done['published']} delivered")
    return done


def ensure_peer_installed() -> None:
    """The peer's pinned packages (package-lock.json), installed once into bench/peer."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise SystemExit("the peer needs Node.js 20 or newer and npm: apt-get install nodejs npm")
    lock = PEER / "package-lock.json"
    stamp = PEER / "node_modules" / ".installed"
    if stamp.exists() and stamp.stat().st_mtime >= lock.stat().st_mtime:
        return
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PEER, check=True
    )
    stamp.touch()


def cell(values: list[float], measure: Measure) -> str:
    def number(value: float) -> str:
        return f"{value:,.{measure.digits}f}"

    middle = statistics.median(values)
    unit = f" {measure.unit}" if measure.unit else ""
    return f"{number(middle)}{unit} ({number(min(values))}{EN_DASH}{number(max(values))})"


def ratio(ours: list[float], theirs: list[float], measure: Measure) -> str:
    """How wssfleet compares, oriented so that 1.0 or more is as good or better."""
    mine, peer = statistics.median(ours), statistics.median(theirs)
    value = mine / peer if measure.higher_is_better else peer / mine
    return f"{value:.2f}{TIMES}"


def main(arguments: argparse.Namespace) -> None:
    ensure_peer_installed()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sides = list(SIDES)
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    with redis_server() as redis_url, tls_material() as tls:
        for number in range(arguments.rounds):
            order = sides if number % 2 == 0 else sides[::-1]
            for side in order:
                print(f"round {number + 1}/{arguments.rounds}: {side}", file=sys.stderr)
                runs[side].append(measure_side(side, redis_url, tls, arguments.only))
    ours, theirs = sides
    shared_by = (
        "Redis, the load generator and one service process a side"
        if arguments.only == "capacity"
        else "HAProxy, Redis, the load generator and two service processes a side"
    )
    print(
        f"\n{arguments.rounds} alternating rounds on 127.0.0.1, {os.cpu_count()} cores shared by "
        f"{shared_by}; median (min{EN_DASH}max) of the rounds, each round's echo and fan-out "
        f"figures the median of its {RUNS_A_ROUND} runs; ratio ≥ 1.00{TIMES} means wssfleet does "
        "at least as well\n"
    )
    print(f"| measure | {ours} | {theirs} | ratio |")
    print("| --- | --- | --- | --- |")
    for measure in MEASURES:
        if measure.key not in runs[ours][0]:
            continue
        mine = [run[measure.key] for run in runs[ours]]
        peer = [run[measure.key] for run in runs[theirs]]
        print(
            f"| {measure.name} | {cell(mine, measure)} | {cell(peer, measure)} | "
            f"{ratio(mine, peer, measure)} |"
        )
    if arguments.only in (None, "capacity"):
        print_master_capacity()


def print_master_capacity() -> None:
    """The lab master's row, when the lab is up (it needs the lab's hosts, not loopback)."""
    print(
        "\nthe lab's master: haproxy_maxconn WebSockets through its TLS to the workers",
        file=sys.stderr,
    )
    master = measure_master()
    if master is None:
        print("\nthe lab's master: not measured (the lab is not up: make deploy first)")
        return
    print(
        f"\n| the lab's master, {master['maxconn']:,} clients (haproxy_maxconn) from "
        f"{MASTER_SOURCES} sources | |\n| --- | --- |\n"
        f"| WebSockets held open after {WINDOW_SECONDS} s | {master['held']:,} "
        f"({master['failed']:,} failed to open) |\n"
        f"| HAProxy memory per WebSocket | {master['memory']:.1f} KiB |"
    )
