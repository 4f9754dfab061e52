"""How the deploy behaves on a deployed lab: idempotent, planned, minimal, safe, renewing.

Runs after the fleet is deployed (`make test` deploys first). Each test leaves the fleet as
the lab inventory describes it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import socket
import ssl
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.e2e.conftest import run
from tests.frames import next_frame
from tests.lab_fleet import (
    REPO,
    changed,
    deploy,
    derived_inventory,
    plan,
    restarted,
    with_status,
    wssfleet,
)
from wssfleet_control import internal_tls
from wssfleet_control.hostside.layout import HAPROXY_CONFIG, RENEW_COMMAND

pytestmark = pytest.mark.timeout(900)


def haproxy_state(lab) -> tuple[str, str]:
    """The live config's checksum and the HAProxy master's PID (a restart changes it)."""
    result = lab.on("master", f"sha256sum {HAPROXY_CONFIG}; systemctl show -p MainPID haproxy")
    checksum, pid = result.stdout.split()[0], result.stdout.split("MainPID=")[1].strip()
    return checksum, pid


def test_second_deploy_changes_nothing_on_any_host():
    code, report, log = deploy()
    assert code == 0, log[-3000:]
    assert len(report["operations"]) > 30
    assert changed(report) == []
    assert report["rollout"] == {"status": "done", "steps": []}


def test_plan_shows_the_change_without_making_it(lab, tmp_path):
    before = haproxy_state(lab)
    code, report, log = plan(derived_inventory(tmp_path, haproxy_timeout_tunnel="2h"))
    assert code == 0, log[-3000:]
    activate = (
        "HAProxy | Ensure the validated HAProxy config is live "
        "(servers changed at runtime, else reloaded)"
    )
    assert sorted(with_status(report, "will change", "may change")) == sorted(
        (operation, master.name)
        for master in lab.fleet.masters
        for operation in ("HAProxy | Ensure the candidate HAProxy config is rendered", activate)
    )
    assert report["rollout"] == {"status": "planned", "steps": []}
    assert haproxy_state(lab) == before


def test_a_setting_a_host_cannot_carry_stops_the_plan_with_one_line_naming_it(lab, tmp_path):
    # Checked against the master's own open-files limit, inside the HAProxy role.
    result = wssfleet("plan", "-i", str(derived_inventory(tmp_path, haproxy_maxconn=2_000_000)))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    named = [line for line in output.splitlines() if "haproxy_maxconn=2000000" in line]
    assert len(named) == 1 and "lower haproxy_maxconn to" in named[0], output[-3000:]


def test_plan_diff_shows_how_files_change_but_never_a_secret(lab, tmp_path):
    changed_settings = derived_inventory(
        tmp_path, haproxy_timeout_tunnel="2h", messages_per_second=61
    )
    result = wssfleet("plan", "-i", str(changed_settings), "--diff")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    # The diff is there for ordinary files...
    assert "timeout tunnel 2h" in output, output[-3000:]
    # ...and the environment file, which changes too, is named without its contents.
    assert "environment file is current (contents withheld: secrets)" in output
    assert "WSSFLEET_MESSAGES_PER_SECOND" not in output
    stored = lab.fleet.secrets(create=False)
    # (internal_tls's format marker is a number, not a secret.)
    stored.pop(internal_tls.FORMAT_KEY, None)
    for name, secret in stored.items():
        assert secret not in output, f"plan --diff printed {name}"


async def open_echoing_socket(lab):
    ws = await lab.connect()
    await next_frame(ws, 10)
    return ws


async def still_echoes(ws) -> bool:
    await ws.send(json.dumps({"type": "echo", "data": "still here"}))
    return (await next_frame(ws, 10))["data"] == "still here"


async def handshakes(lab, address: str, stop: asyncio.Event) -> tuple[int, list[str]]:
    """New WebSockets through one master's own address, one after another, until ``stop``:
    how many got their welcome, and how each failed one failed."""
    welcomed, failures = 0, []
    while not stop.is_set():
        try:
            ws = await lab.connect(host=address, open_timeout=10)
            await next_frame(ws, 10)
            await ws.close()
            welcomed += 1
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as error:
            failures.append(f"{type(error).__name__}: {error}")
        await asyncio.sleep(0.05)
    return welcomed, failures


def reload_spans(lab, master: str, since: float) -> list[tuple[float, float]]:
    """When HAProxy on ``master`` began and finished each reload since ``since`` (epoch
    seconds), from its journal."""
    journal = lab.on(
        master, f"journalctl -u haproxy --no-pager -o short-unix --since @{since:.0f}"
    ).stdout
    spans, began = [], None
    for line in journal.splitlines():
        if ": Reloading HAProxy" in line:
            began = float(line.split()[0])
        elif "Loading success." in line and began is not None:
            spans.append((began, float(line.split()[0])))
            began = None
    return spans


def test_one_setting_changes_and_reloads_only_haproxy(lab, tmp_path):
    _, pid_before = haproxy_state(lab)
    started = time.time()

    async def scenario():
        ws = await open_echoing_socket(lab)
        stop = asyncio.Event()
        knocking = [
            asyncio.create_task(handshakes(lab, master.address, stop))
            for master in lab.fleet.masters
        ]
        result = await asyncio.to_thread(
            deploy, derived_inventory(tmp_path, haproxy_timeout_tunnel="2h")
        )
        stop.set()
        tried = await asyncio.gather(*knocking)
        alive = await still_echoes(ws)
        await ws.close()
        return result, alive, tried

    (code, report, log), alive, tried = run(scenario(), timeout=600)
    assert code == 0, log[-3000:]
    # A client arriving at any master while the masters take the new config gets in.
    for master, (welcomed, failures) in zip(lab.fleet.masters, tried, strict=True):
        print(f"\n{master.name}: {welcomed} handshakes during the deploy, {len(failures)} failed")
        assert welcomed > 0 and failures == [], (master.name, failures[:5])
    # One master at a time: each reload began after the one before it had finished.
    spans = sorted(
        span for master in lab.fleet.masters for span in reload_spans(lab, master.name, started)
    )
    assert len(spans) == len(lab.fleet.masters), spans
    assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans)), spans
    assert restarted(report) == []
    assert set(changed(report)) == {
        (operation, master.name)
        for master in lab.fleet.masters
        for operation in (
            "HAProxy | Ensure the candidate HAProxy config is rendered",
            "HAProxy | Ensure the validated HAProxy config is live "
            "(servers changed at runtime, else reloaded)",
        )
    }
    assert alive, "a WebSocket opened before the reload was dropped"
    assert "timeout tunnel 2h" in lab.on("master", f"cat {HAPROXY_CONFIG}").stdout
    assert haproxy_state(lab)[1] == pid_before, "HAProxy was restarted, not reloaded"
    code, _, log = deploy()
    assert code == 0, log[-3000:]
    assert "timeout tunnel 1h" in lab.on("master", f"cat {HAPROXY_CONFIG}").stdout


def test_rejected_haproxy_template_fails_and_leaves_haproxy_untouched(lab, tmp_path):
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    config = templates / "haproxy" / "haproxy.cfg.j2"
    config.write_text(config.read_text().replace("balance leastconn", "balance not-a-method"))
    before = haproxy_state(lab)
    code, report, _ = deploy(REPO / "inventory" / "lab.py", "--templates", str(templates))
    assert code != 0
    assert not report["ok"]
    # HAProxy's own complaint reaches the operator, naming the host and the step.
    assert any(
        error.startswith("master: HAProxy | Ensure the validated HAProxy config is live")
        and "balance only supports" in error
        for error in report["errors"]
    ), report["errors"]
    assert haproxy_state(lab) == before
    assert lab.on("master", "systemctl is-active haproxy").stdout.strip() == "active"
    code, _, log = deploy()
    assert code == 0, log[-3000:]


def served_serial(lab) -> int:
    context = lab.tls_context()
    with (
        socket.create_connection((lab.master_address, 443), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=lab.domain) as connection,
    ):
        from cryptography import x509

        return x509.load_der_x509_certificate(
            connection.getpeercert(binary_form=True)
        ).serial_number


def test_renewal_swaps_the_certificate_without_dropping_open_websockets(lab):
    serial_before = served_serial(lab)

    async def scenario():
        ws = await open_echoing_socket(lab)
        renewal = await asyncio.to_thread(wssfleet, "renew", "-i", "inventory/lab.py")
        alive = await still_echoes(ws)
        await ws.close()
        return renewal, alive

    renewal, alive = run(scenario(), timeout=400)
    assert renewal.returncode == 0, renewal.stdout + renewal.stderr
    assert "all renewals succeeded" in renewal.stdout + renewal.stderr
    assert served_serial(lab) != serial_before
    assert alive, "the WebSocket opened before the renewal was dropped"


def test_cron_runs_the_same_renewal_script_every_six_hours(lab):
    entry = lab.on("master", "cat /etc/cron.d/wssfleet-certbot").stdout
    line = next(line for line in entry.splitlines() if "wssfleet-renew" in line)
    assert line.split()[1] == "*/6"
    assert f"{RENEW_COMMAND} --random-delay" in line
    assert ssl  # the hook itself is exercised by the renewal test above


def test_a_daemon_that_starts_then_dies_fails_the_deploy(lab):
    """systemd says "active" the moment a simple unit's process is spawned: a daemon that
    dies a second later (redis_exporter refusing its CA file did) passed for running. The
    deploy looks again once it is done, and fails naming the unit."""
    worker = lab.fleet.workers[-1].name
    unit = "prometheus-node-exporter.service"
    drop_in = f"/etc/systemd/system/{unit}.d/zz-e2e-dies.conf"
    broken = (
        f"mkdir -p {unit}.d && printf '[Service]\\nExecStart=\\n"
        'ExecStart=/bin/sh -c "sleep 1; exit 3"\\nRestart=no\\n\' > ' + drop_in
    )
    assert lab.on(worker, f"cd /etc/systemd/system && {broken}").returncode == 0
    try:
        assert lab.on(worker, f"systemctl daemon-reload && systemctl stop {unit}").returncode == 0
        code, _, log = deploy()
        assert code != 0, log[-3000:]
        assert f"{unit} started, then stopped" in log, log[-3000:]
    finally:
        lab.on(worker, f"rm -f {drop_in} && systemctl daemon-reload")
    code, _, log = deploy()
    assert code == 0, log[-3000:]
    assert lab.on(worker, f"systemctl is-active {unit}").stdout.strip() == "active"
    # As the lab was: Prometheus scrapes it again (make status counts a target down).
    deadline = time.monotonic() + 60
    while wssfleet("status").returncode != 0:
        assert time.monotonic() < deadline, "make status still sees a problem a minute later"
        time.sleep(2)
