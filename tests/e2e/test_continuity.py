"""No client locked out, stranded or stampeded: crowds of clients that follow the client
contract (tests/contract_client.py) stay connected through a rolling release, a frozen
instance, a killed instance and a vanished host, and reconnect waves from one address get in
while a flooding address gets no more than its limit.

Clients run on this machine; sources other than the lab's gateway are extra addresses on the
lab bridge. Every load is bounded in clients and seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import ssl
import subprocess
import time

import pytest

from tests.contract_client import Crowd, busiest_second, drain_bound
from tests.e2e.conftest import run
from tests.frames import next_frame
from tests.lab_fleet import deploy, derived_inventory, restarted, wssfleet
from wssfleet_control import commands
from wssfleet_control.checkout import REPO
from wssfleet_control.hostside.layout import (
    BUILTIN_APP,
    INSTANCE_PREFIX,
    RUNTIME_HELPER,
    app_layout,
    instance_unit,
)

pytestmark = pytest.mark.timeout(300)

RUNTIME = f"python3 {RUNTIME_HELPER}"


def connector(lab, source: str | None = None, browser: bool = False):
    """How a crowd's client connects: from ``source``; a browser does not ping."""
    options = {"open_timeout": 15}
    if source:
        options["local_addr"] = (source, 0)
    if browser:
        options["ping_interval"] = None
    return lambda: lab.connect(**options)


def servers(lab) -> dict[str, str]:
    """Every worker instance's server, the apps' too, and its status on the first master."""
    rows = json.loads(lab.on(lab.fleet.master.name, f"{RUNTIME} servers").stdout)
    ours = {app_layout(name).backend for name in (BUILTIN_APP, *lab.fleet.settings.apps)}
    return {
        f"{row['backend']}/{row['server']}": row["status"] for row in rows if row["backend"] in ours
    }


def wait_all_up(lab, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        states = servers(lab)
        if all(status.startswith("UP") for status in states.values()):
            return
        time.sleep(1)
    raise AssertionError(f"HAProxy's servers are not all UP again: {states}")


def label(worker, port: int) -> str:
    """The worker label an instance puts in its welcome (the unit's %H:%i)."""
    return f"wssfleet-{worker.name}:{port}"


def drained_events(lab, since: str) -> dict[str, dict]:
    """Each instance's last 'drained' log event since ``since``, by worker label."""
    found = {}
    for worker in lab.fleet.workers:
        output = lab.on(
            worker.name, f"journalctl -u '{INSTANCE_PREFIX}*' --since '{since}' -o cat --no-pager"
        ).stdout
        for line in output.splitlines():
            if '"drained"' in line:
                entry = json.loads(line)
                found[entry["worker"]] = entry
    return found


def test_a_rolling_release_drops_no_handshake_and_strands_no_client(lab, tmp_path, source_address):
    clients = 1000
    source = source_address(1)
    drain_seconds = lab.fleet.settings.drain_seconds
    # This test measures drains, not admission: let the crowd's reconnections all in.
    roomy = {"haproxy_connection_rate_limit": 50_000}
    code, _, log = deploy(derived_inventory(tmp_path / "roomy", **roomy))
    assert code == 0, log[-3000:]
    release = derived_inventory(tmp_path / "release", **roomy, messages_per_second=61)
    since = lab.on(lab.fleet.workers[0].name, "date '+%Y-%m-%d %H:%M:%S'").stdout.strip()

    async def scenario():
        crowd = Crowd(connector(lab, source), clients)
        crowd.start()
        await crowd.until_connected(clients, 90)
        assert crowd.connected() == clients, crowd.refusals()[:5]
        before = crowd.where()
        result = await asyncio.to_thread(deploy, release)
        await crowd.until_connected(clients, 15)
        return crowd, before, result, await crowd.finish()

    try:
        crowd, before, (code, report, log), until = run(scenario(), timeout=280)
        assert code == 0, log[-3000:]
        assert len(restarted(report)) == 2 * len(lab.fleet.workers)
        closes = crowd.closes()
        drains = drained_events(lab, since)
        print(
            f"\nrolling release, {clients} clients: {len(crowd.refusals())} failed handshakes, "
            f"longest without a connection {crowd.longest_offline(until):.2f} s, "
            f"busiest second per instance "
            + ", ".join(f"{w}: {d['busiest_second']}/{d['clients']}" for w, d in drains.items())
        )
        assert crowd.refusals() == [], crowd.refusals()[:5]
        assert {code for _, code, _ in closes} == {1012}
        assert crowd.longest_offline(until) <= 3.0
        # What each instance did, from its own log: it drained every client it had (it may
        # have gained some from earlier drains) and never closed more than its share of them
        # in any second. What the clients saw agrees, within jitter: their timestamps come
        # from one Python process running 1,000 TLS clients on the same two cores, which can
        # stall and see a second's closes late and bunched (once 54 against a bound of 35,
        # while the instance's own log said 34). A herd would be all ~330 at once.
        assert sorted(drains) == sorted(before), drains
        for worker, count in before.items():
            drained = drains[worker]
            assert drained["clients"] >= count
            bound = drain_bound(drained["clients"], drain_seconds)
            assert drained["busiest_second"] <= bound, (worker, drained)
            seen = [moment for moment, _, closed_by in closes if closed_by == worker]
            assert busiest_second(seen) <= 2 * bound, (worker, busiest_second(seen))
    finally:
        code, _, log = deploy()
        assert code == 0, log[-3000:]


def test_clients_of_a_frozen_instance_are_connected_elsewhere_within_15_s(lab, source_address):
    worker, port = lab.fleet.workers[0], lab.fleet.settings.worker_base_port
    frozen = label(worker, port)

    async def scenario():
        crowd = Crowd(connector(lab, source_address(5), browser=True), 200)
        crowd.start()
        await crowd.until_connected(200, 60)
        victims = [seen for seen in crowd.seen if seen.connects[-1][1] == frozen]
        assert victims, crowd.where()
        lab.on(worker.name, commands.signal_instance(port, "SIGSTOP"))
        frozen_at = time.monotonic()
        while time.monotonic() - frozen_at < 40:
            moved = [
                seen
                for seen in victims
                if seen.connects[-1][0] > frozen_at and seen.connects[-1][1] != frozen
            ]
            if len(moved) == len(victims):
                break
            await asyncio.sleep(0.2)
        took = time.monotonic() - frozen_at
        await crowd.finish()
        return len(victims), len(moved), took

    try:
        victims, moved, took = run(scenario(), timeout=120)
    finally:
        lab.on(worker.name, commands.signal_instance(port, "SIGCONT"))
    print(f"\nfrozen instance: its {victims} clients connected elsewhere in {took:.1f} s")
    assert moved == victims
    assert took <= 15, f"the frozen instance's clients took {took:.1f} s to move"
    wait_all_up(lab)


def test_clients_of_a_killed_instance_are_back_within_2_s(lab, source_address):
    worker, port = lab.fleet.workers[-1], lab.fleet.settings.worker_base_port + 1
    killed = label(worker, port)

    async def scenario():
        crowd = Crowd(connector(lab, source_address(6)), 200)
        crowd.start()
        await crowd.until_connected(200, 60)
        lab.on(worker.name, commands.signal_instance(port, "SIGKILL"))
        killed_at = time.monotonic()
        await asyncio.sleep(8)
        return crowd, killed_at, await crowd.finish()

    crowd, killed_at, until = run(scenario(), timeout=120)
    victims = [seen for seen in crowd.seen if seen.closes and seen.closes[0][2] == killed]
    assert victims
    assert [refusal for refusal in crowd.refusals() if refusal[0] >= killed_at] == []
    longest = max(span for seen in victims for span in seen.offline_spans(until))
    print(f"\nkilled instance: {len(victims)} clients, longest offline {longest:.2f} s")
    assert longest <= 2.0, f"a client of the killed instance was offline {longest:.1f} s"
    wait_all_up(lab)


def test_a_vanished_worker_host_costs_new_connections_no_error(lab, source_address):
    gone = lab.fleet.workers[-1]
    # Asked before the cut: SSH to the host goes with it.
    gone_instances = len(lab.ports(gone.name))
    # The host drops every packet, as if unplugged; a timer on it undoes that, since SSH
    # to it is cut too.
    vanish = (
        "systemd-run --quiet --on-active=20 nft delete table inet vanish && "
        "nft add table inet vanish && "
        "nft add chain inet vanish input '{ type filter hook input priority -10; policy drop; }'"
    )

    async def scenario():
        stranded = Crowd(connector(lab, source_address(7)), 100)
        stranded.start()
        await stranded.until_connected(100, 60)
        # Its own SSH session is cut mid-answer: do not wait for it.
        cut = asyncio.create_task(asyncio.to_thread(_cut_off, lab, gone.name, vanish))
        await asyncio.sleep(1)
        vanished_at = time.monotonic()
        failures, served = [], 0
        while time.monotonic() - vanished_at < 15:
            await asyncio.sleep(0.1)
            try:
                ws = await lab.connect(open_timeout=15)
                welcome = await next_frame(ws, 10)
                await ws.close()
                served += 1
                assert not welcome["worker"].startswith(f"wssfleet-{gone.name}:")
            except Exception as error:
                failures.append(repr(error))
        await stranded.until_connected(100, 15)
        moved = stranded.connected()
        await stranded.finish()
        await cut
        return failures, served, moved

    failures, served, moved = run(scenario(), timeout=150)
    print(f"\nvanished host: {served} new connections served, failures {failures}")
    # No 503 (no server left to try), no reset, no refusal. The one failure HAProxy allows: a
    # handshake still waiting to connect to the vanished host when the checks mark one of its
    # instances down is cut by on-marked-down shutdown-sessions (the client sees no HTTP
    # answer, and the client contract retries it). This loop has one handshake in flight at
    # a time, so each instance's mark-down can cut at most one.
    assert [f for f in failures if not f.startswith("InvalidMessage(")] == [], failures[:5]
    assert len(failures) <= gone_instances, failures[:5]
    assert served >= 50
    assert moved == 100, "clients of the vanished host were not all connected elsewhere"
    time.sleep(8)  # the host's timer lifts the block at 20 s
    wait_all_up(lab)


def spread(where: dict[str, int], instances: list[str]) -> float:
    """How far the farthest instance is off the mean, as a share of it (the rebalancer moves
    clients while it is over 0.2)."""
    counts = [where.get(instance, 0) for instance in instances]
    mean = sum(counts) / len(counts)
    return max(abs(count - mean) for count in counts) / mean


async def until_even(crowd: Crowd, instances: list[str], seconds: float) -> None:
    """Until the rebalancer has no client to move: clients it moves would be counted as the
    fault's."""
    deadline = time.monotonic() + seconds
    while spread(crowd.where(), instances) > 0.2:
        assert time.monotonic() < deadline, f"the crowd never evened out: {crowd.where()}"
        await asyncio.sleep(0.5)


def test_after_an_instance_restarts_the_fleet_evens_out_within_2_minutes(lab, source_address):
    worker, port = lab.fleet.workers[0], lab.fleet.settings.worker_base_port
    rate = lab.fleet.settings.rebalance_rate
    instances = [label(node, p) for node in lab.fleet.workers for p in lab.ports(node.name)]

    async def scenario():
        crowd = Crowd(connector(lab, source_address(8)), 1000)
        crowd.start()
        await crowd.until_connected(1000, 60)
        await asyncio.to_thread(lab.on, worker.name, f"systemctl restart {instance_unit(port)}")
        restarted_at = time.monotonic()
        uneven = 0.0
        while time.monotonic() - restarted_at < 120:
            await asyncio.sleep(0.5)
            uneven = max(uneven, spread(crowd.where(), instances))
            if crowd.connected() == 1000 and spread(crowd.where(), instances) <= 0.2:
                break
        took = time.monotonic() - restarted_at
        where = crowd.where()
        moved = [moment for moment, code, _ in crowd.closes() if code == 1012]
        await crowd.finish()
        return took, uneven, where, moved

    took, uneven, where, moved = run(scenario(), timeout=220)
    print(
        f"\nrebalance: even after {took:.1f} s (at worst {uneven:.0%} off the mean), "
        f"{len(moved)} clients moved, busiest second {busiest_second(moved)} (rate {rate})"
    )
    assert uneven > 0.2, "the restart never unbalanced the fleet: the test tested nothing"
    assert took < 120, f"not even after 2 minutes: {where}"
    # What clients saw: the rate, give or take what their one Python process on the same two
    # cores adds when it stalls and sees a second's closes late and bunched (once 27 against
    # a rate of 20, with other work on the machine). A herd would be hundreds at once.
    assert busiest_second(moved) <= 2 * rate


def test_an_unavoidable_reload_moves_websockets_to_the_new_process_gradually(
    lab, tmp_path, source_address
):
    clients, close_spread = 60, 15
    # An HSTS change is a frontend change: HAProxy must reload.
    changed = derived_inventory(
        tmp_path, hsts_max_age=86400, haproxy_close_spread=f"{close_spread}s"
    )

    instances = [label(node, p) for node in lab.fleet.workers for p in lab.ports(node.name)]

    async def scenario():
        crowd = Crowd(connector(lab, source_address(9)), clients)
        crowd.start()
        await crowd.until_connected(clients, 60)
        # The crowd may land unevenly (an earlier test's connections still closing): the
        # rebalancer's moves come first, and only closes after the reload began are counted.
        await until_even(crowd, instances, 60)
        reload_began = time.monotonic()
        result = await asyncio.to_thread(deploy, changed)
        await asyncio.sleep(close_spread + 3)
        await crowd.until_connected(clients, 15)
        connected = crowd.connected()
        seen = [close for close in crowd.closes() if close[0] >= reload_began]
        await crowd.finish()
        return result, connected, seen

    try:
        (code, _, log), connected, seen = run(scenario(), timeout=200)
        assert code == 0, log[-3000:]
    finally:
        code, _, log = deploy()
        assert code == 0, log[-3000:]
    closes = [moment for moment, _, _ in seen]
    window = max(closes) - min(closes) if closes else 0
    print(
        f"\nreload: {len(closes)} WebSockets moved over {window:.1f} s, "
        f"busiest second {busiest_second(closes)}"
    )
    assert len(closes) == clients, ("not each WebSocket of the old process closed once", seen)
    assert window >= close_spread / 2, f"closed within {window:.1f} s: a herd, not a trickle"
    assert busiest_second(closes) <= math.ceil(clients / close_spread) + 2
    assert connected == clients


def test_a_drained_worker_hands_its_clients_to_the_others_and_gets_no_new_ones(lab, source_address):
    drained = lab.fleet.workers[0]
    prefix = f"wssfleet-{drained.name}:"

    async def scenario():
        crowd = Crowd(connector(lab, source_address(10)), 200)
        crowd.start()
        await crowd.until_connected(200, 60)
        asked_at = time.monotonic()
        result = await asyncio.to_thread(wssfleet, "drain", drained.name)
        await crowd.until_connected(200, 15)
        where = crowd.where()
        codes = {code for _, code, worker in crowd.closes() if worker.startswith(prefix)}
        refused = [refusal for refusal in crowd.refusals() if refusal[0] >= asked_at]
        # The apps' instances there get no new client either.
        echoes = []
        for _ in range(6):
            async with await lab.connect_app("/echo") as ws:
                echoes.append(json.loads(await ws.recv())["instance"])
        back = await asyncio.to_thread(wssfleet, "ready", drained.name)
        wait_all_up(lab)
        after = set()
        for _ in range(6):
            async with await lab.connect_app("/echo") as ws:
                after.add(json.loads(await ws.recv())["instance"].split(":")[0])
        return result, where, codes, refused, back, echoes, after
        await crowd.finish()

    result, where, codes, refused, back, echoes, after = run(scenario(), timeout=200)
    assert result.returncode == 0, result.stderr
    assert back.returncode == 0, back.stderr
    assert sum(where.values()) == 200 and refused == []
    assert not [label for label in where if label.startswith(prefix)], where
    assert codes == {1012}
    assert echoes and not [label for label in echoes if label.startswith(prefix)], echoes
    # Ready again: the app's instance there is back in rotation (leastconn: idle, it is next).
    assert f"wssfleet-{drained.name}" in after, after
    wait_all_up(lab)


def _cut_off(lab, host: str, command: str) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        lab.on(host, command, timeout=8)


def test_a_wave_of_1000_clients_from_one_address_is_in_within_20_s(lab, source_address):
    # With the default limit most of the wave is refused at first: with refused attempts
    # counted against the source (the old rule), those would be kept out while they retry.
    source = source_address(2)

    async def scenario():
        wave = Crowd(connector(lab, source), 1000)
        wave.start()
        took = await wave.until_connected(1000, 40)
        connected, refused = wave.connected(), len(wave.refusals())
        await wave.finish()
        return took, connected, refused

    took, connected, refused = run(scenario(), timeout=200)
    print(f"\nwave: 1000 clients in after {took:.1f} s ({refused} refused attempts)")
    assert refused > 0, "the wave was never refused: it tested nothing"
    assert connected == 1000
    assert took <= 20, f"the wave took {took:.1f} s ({refused} refused attempts)"


SSLYZE = REPO / "build" / "sslyze" / "bin" / "sslyze"


def scanned(lab) -> str:
    """sslyze against the front door, checked against Mozilla's intermediate configuration
    with the lab's ACME root trusted: what it printed."""
    target = f"{lab.domain}:443{{{lab.master_address}}}"
    result = subprocess.run(
        [str(SSLYZE), "--mozilla_config=intermediate", f"--certinfo_ca_file={lab.root_bundle}",
         target],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return result.stdout + result.stderr


def compliance_issues(output: str) -> list[str]:
    """The criteria sslyze found unmet (its "* criteria: why" lines after FAILED)."""
    section = output.partition("COMPLIANCE AGAINST")[2]
    return [line.split("*", 1)[1].split(":")[0].strip() for line in section.splitlines()
            if line.strip().startswith("* ")]  # fmt: skip


@contextlib.contextmanager
def connecting_from(lab, address: str):
    """This machine's connections to the front door leave from ``address`` for the block."""
    route = [f"{lab.master_address}/32", "dev", lab.described["bridge"], "src", address]
    subprocess.run(["ip", "route", "add", *route], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["ip", "route", "del", *route], check=True, capture_output=True)


def test_a_flooding_source_gets_its_limit_and_nobody_else_notices(lab, tmp_path, source_address):
    """Also: a TLS scanner from one address is refused by the same limit, and completes from an
    address in admission_exempt_sources (this machine's own on the lab bridge)."""
    limit = 50
    # Long enough that the first second's allowance is a small part of the count.
    seconds = 30
    code, _, log = deploy(
        derived_inventory(
            tmp_path,
            haproxy_connection_rate_limit=limit,
            admission_exempt_sources=[lab.described["gateway"]],
        )
    )
    assert code == 0, log[-3000:]
    flooder = source_address(3)
    bystander_address = source_address(4)
    context = ssl.create_default_context(cafile=lab.root_bundle)

    async def attempt() -> bool:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    lab.master_address,
                    443,
                    ssl=context,
                    server_hostname=lab.domain,
                    local_addr=(flooder, 0),
                ),
                10,
            )
        except (OSError, ssl.SSLError, TimeoutError):
            return False
        writer.close()
        return True

    async def bystander(failures: list[str]) -> int:
        served = 0
        for _ in range(seconds):
            started = time.monotonic()
            try:
                ws = await lab.connect(local_addr=(bystander_address, 0), open_timeout=10)
                await next_frame(ws, 10)
                await ws.close()
                served += 1
            except Exception as error:
                failures.append(repr(error))
            await asyncio.sleep(max(0, started + 1 - time.monotonic()))
        return served

    async def scenario():
        # Ten times the limit, steadily: limit / 10 s * 10 = limit attempts a second.
        failures: list[str] = []
        others = asyncio.create_task(bystander(failures))
        attempts = []
        started = time.monotonic()
        for n in range(seconds * limit):
            await asyncio.sleep(max(0, started + n / limit - time.monotonic()))
            attempts.append(asyncio.create_task(attempt()))
        admitted = sum(await asyncio.gather(*attempts))
        return admitted, await others, failures

    try:
        admitted, served, failures = run(scenario(), timeout=200)
        exempt_scan = scanned(lab)
        with connecting_from(lab, source_address(5)):
            limited_scan = scanned(lab)
    finally:
        code, _, log = deploy()
        assert code == 0, log[-3000:]
    print(f"\nsslyze from an exempt address:\n{exempt_scan[-1500:]}")
    assert "rejected the connection" not in exempt_scan.lower(), exempt_scan[-3000:]
    assert "ERROR - Scan did not run" not in exempt_scan, exempt_scan[-3000:]
    assert set(compliance_issues(exempt_scan)) <= {"certificate_path_validation"}, exempt_scan
    assert "rejected the connection" in limited_scan.lower(), limited_scan[-3000:]
    allowed = limit * seconds / 10
    print(
        f"\nflood: {admitted} admitted of {seconds * limit} (limit {allowed:.0f}); "
        f"bystander {served}/{seconds}"
    )
    assert abs(admitted - allowed) <= 0.1 * allowed, f"{admitted} admitted, limit {allowed:.0f}"
    assert failures == [] and served == seconds
