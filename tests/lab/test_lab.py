"""The lab as CI uses it: up from whatever is on the machine, idempotent, reachable, and
gone without a trace after `down`. The tests run in order and leave the lab up."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest

from lab import core, network, rootfs
from lab.config import BRIDGE, MACHINES_DIR, LabSettings
from lab.processes import find
from tests.lab_fleet import wssfleet

pytestmark = pytest.mark.timeout(600)


def lab(*arguments: str) -> subprocess.CompletedProcess:
    return wssfleet("lab", *arguments)


def lab_json() -> dict:
    return json.loads(core.LAB_JSON.read_text())


def ssh(address: str, command: str) -> subprocess.CompletedProcess:
    host = next(h for h in LabSettings.from_environment().hosts if h.address == address)
    return subprocess.run(
        core.ssh_command(host, command), capture_output=True, text=True, timeout=60
    )


def test_up_boots_every_host_with_systemd_and_ssh():
    result = lab("up")
    assert result.returncode == 0, result.stderr
    described = lab_json()
    settings = LabSettings.from_environment()
    addresses = [m["address"] for m in described["masters"]]
    addresses += [w["address"] for w in described["workers"]]
    assert len(addresses) == settings.masters + settings.workers
    assert described["master"] == described["masters"][0]
    for address in addresses:
        answer = ssh(address, "systemctl is-system-running")
        assert answer.stdout.strip() == "running", (address, answer.stderr)


def test_workers_reach_the_master():
    described = lab_json()
    master = described["master"]["address"]
    probe = f"python3 -c 'import socket; socket.create_connection((\"{master}\", 22), 5)'"
    for worker in described["workers"]:
        assert ssh(worker["address"], probe).returncode == 0, worker


def test_acme_directories_answer_over_verified_https():
    described = lab_json()
    context = ssl.create_default_context(cafile=described["acme_ca_bundle"])
    for url, root in (
        (described["acme_directory"], described["acme_root_bundle"]),
        (described["acme_dns01"]["directory"], described["acme_dns01"]["root_bundle"]),
    ):
        with urllib.request.urlopen(url, context=context, timeout=10) as reply:
            directory = json.loads(reply.read())
        assert {"newAccount", "newNonce", "newOrder"} <= directory.keys()
        assert Path(root).read_text().startswith("-----BEGIN CERTIFICATE")


def test_knot_answers_for_the_lab_zone_from_the_bridge():
    """The DNS-01 CA's resolver: a master reaches it (certbot's updates go there)."""
    dns01 = lab_json()["acme_dns01"]
    master = lab_json()["master"]["address"]
    probe = (
        "python3 -c 'import socket; "
        f'socket.create_connection(("{dns01["server"]}", {dns01["port"]}), 5)\''
    )
    assert ssh(master, probe).returncode == 0


def test_second_up_is_a_no_op():
    before = core.load_state()
    result = lab("up")
    assert result.returncode == 0, result.stderr
    assert "the lab is up:" in result.stderr
    assert "copying" not in result.stderr
    assert core.load_state()["processes"] == before["processes"]


def test_down_leaves_no_process_bridge_nat_rule_mount_or_host():
    settings = LabSettings.from_environment()
    pids = [entry["pid"] for entry in core.load_state()["processes"]]
    result = lab("down")
    assert result.returncode == 0, result.stderr
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert find(f"--network-bridge={BRIDGE}") == []
    assert core.orphans(settings) == []
    assert not network.bridge_exists()
    assert not network.nat_exists()
    assert rootfs.mounts_below(MACHINES_DIR) == []
    assert core.host_roots() == []
    assert not core.STATE_FILE.exists()
    assert not core.LAB_JSON.exists()


def test_down_twice_is_fine():
    result = lab("down")
    assert result.returncode == 0, result.stderr


def test_up_recovers_from_what_a_stopped_session_left_behind():
    # What a session stopped mid-run leaves: kernel state and root filesystems, no record.
    subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
    subprocess.run(["nft", "add", "table", "inet", "wssfleet_lab"], check=True)
    stale_root = MACHINES_DIR / "wssfleet-worker9"
    (stale_root / "etc").mkdir(parents=True, exist_ok=True)
    result = lab("up")
    assert result.returncode == 0, result.stderr
    assert "clearing what an earlier lab left behind" in result.stderr
    assert not stale_root.exists()
    assert ssh(lab_json()["master"]["address"], "true").returncode == 0
