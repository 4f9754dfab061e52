"""Least privilege in the lab: the firewall owns only its own table and follows the inventory's
SSH port; a rotated signing key keeps old tokens working through the overlap and is refused
after it."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from tests.e2e.conftest import run
from tests.frames import next_frame
from tests.lab_fleet import (
    LAB_INVENTORY,
    REPO,
    changed,
    deploy,
    derived_inventory,
    edited,
    wssfleet,
)
from wssfleet import auth
from wssfleet_control import inventory, secrets
from wssfleet_control.hostside.layout import CURRENT, LIVE_CERTIFICATE, SERVICE_ENVIRONMENT

pytestmark = pytest.mark.timeout(400)

SSH_PORT = 2222


def ssh(config: Path, host: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", "-F", str(config), host, command], capture_output=True, text=True, timeout=timeout
    )


def test_the_firewall_keeps_other_tables_and_the_inventorys_ssh_port(lab, tmp_path):
    worker = lab.fleet.workers[-1].name
    # A second sshd on the new port, as an operator moving SSH would start one.
    started = lab.on(worker, f"/usr/sbin/sshd -p {SSH_PORT} -o PidFile=/run/sshd-{SSH_PORT}.pid")
    assert started.returncode == 0, started.stderr
    foreign_table = (
        "nft add table inet operator && nft add set inet operator kept '{ type ipv4_addr; }'"
    )
    assert lab.on(worker, foreign_table).returncode == 0
    moved = tmp_path / "moved_ssh.py"
    moved.write_text(
        "import runpy\n"
        f"_lab = runpy.run_path({str(LAB_INVENTORY)!r})\n"
        f"workers = [(n, {{**d, 'ssh_port': {SSH_PORT}}}) if n == {worker!r} else (n, d)\n"
        "           for n, d in _lab['workers']]\n"
        "master, redis, all = _lab['master'], _lab['redis'], _lab['all']\n"
    )
    config = tmp_path / "ssh_config"
    config.write_text(inventory.load(moved).ssh_config())
    # As on a new host whose SSH listens on 2222: no wssfleet table yet.
    assert lab.on(worker, "nft delete table inet wssfleet").returncode == 0
    try:
        code, _, log = deploy(moved)
        assert code == 0, log[-3000:]
        # The deploy reached the host on the new port and opened it in the firewall...
        ruleset = ssh(config, worker, "nft list table inet wssfleet")
        assert ruleset.returncode == 0, ruleset.stderr
        assert f"tcp dport {SSH_PORT} accept" in ruleset.stdout
        # ...and left the operator's table alone.
        foreign = ssh(config, worker, "nft list table inet operator")
        assert foreign.returncode == 0 and "set kept" in foreign.stdout, foreign.stderr
        # Reachable after the deploy: the next one gets in the same way.
        again, _, log = deploy(moved)
        assert again == 0, log[-3000:]
        # nftables.service's own config flushes everything when it restarts; the table
        # comes back with it.
        # (systemctl waits for nftables' own job; ours follows it.)
        restarted = ssh(
            config,
            worker,
            "systemctl restart nftables && for i in $(seq 50); do "
            "nft list table inet wssfleet >/dev/null 2>&1 && break; sleep 0.1; done; "
            "nft list tables",
        )
        assert "table inet wssfleet" in restarted.stdout, restarted.stdout + restarted.stderr
    finally:
        # Back to port 22: drop wssfleet's table over the port that is open, then deploy.
        ssh(config, worker, "nft delete table inet wssfleet; nft delete table inet operator")
        ssh(config, worker, f"kill $(cat /run/sshd-{SSH_PORT}.pid)")
        code, _, log = deploy()
        assert code == 0, log[-3000:]


SUDO_USER = "deploy"
# Run as nobody on a host while deploys upload secrets: every file it can find where uploads
# pass or land, read as soon as it appears; it reports each one that held a secret.
# A round every 2 ms (about 0.5 ms of reading), not a busy loop: the lab's hosts share this
# machine's two cores, and two spinning watchers doubled every deploy they watched, whatever
# their priority. A file an upload leaves readable lives for at least an SSH round trip.
WATCH_SECRETS = """
import glob, json, os, time
secrets = [line.encode() for line in open('/tmp/watch/secrets').read().split()]
places = ['/tmp/**', '/var/tmp/**', '/var/lib/wssfleet-uploads/*', '/etc/wssfleet/*',
          '/etc/wssfleet-rebalancer.env', '/etc/redis/*', '/etc/wssfleet-redis/*',
          '/home/*/**']
seen, rounds = set(), 0
while not os.path.exists('/tmp/watch/stop'):
    rounds += 1
    for place in places:
        for path in glob.glob(place, recursive=True):
            if path.startswith('/tmp/watch'):
                continue
            try:
                with open(path, 'rb') as handle:
                    data = handle.read()
            except OSError:
                continue
            if any(secret in data for secret in secrets):
                seen.add(path)
    time.sleep(0.002)
open('/tmp/watch/report', 'w').write(json.dumps({'seen': sorted(seen), 'rounds': rounds}))
"""


def with_sudo_user(lab, hosts: list[str]) -> None:
    """A login user with passwordless sudo and the lab's key on each host, as an operator who
    does not log in as root has."""
    for host in hosts:
        made = lab.on(
            host,
            f"set -e; command -v sudo >/dev/null || DEBIAN_FRONTEND=noninteractive "
            f"apt-get install -y -q sudo >/dev/null; id {SUDO_USER} >/dev/null 2>&1 || "
            f"useradd -m -s /bin/sh {SUDO_USER}; echo '{SUDO_USER} ALL=(ALL) NOPASSWD:ALL' "
            f"> /etc/sudoers.d/{SUDO_USER}; chmod 440 /etc/sudoers.d/{SUDO_USER}; "
            f"install -d -m 700 -o {SUDO_USER} -g {SUDO_USER} /home/{SUDO_USER}/.ssh; "
            f"install -m 600 -o {SUDO_USER} -g {SUDO_USER} /root/.ssh/authorized_keys "
            f"/home/{SUDO_USER}/.ssh/authorized_keys",
            timeout=300,
        )
        assert made.returncode == 0, made.stderr


# Left readable for 20 ms while the watcher runs: it must be seen, or the watcher proves nothing.
CANARY_FILE = "/tmp/wssfleet-canary"


def watch_secrets(lab, host: str, values: list[str]) -> None:
    canary = "canary-" + os.urandom(8).hex()
    started = lab.on(
        host,
        "set -e; rm -rf /tmp/watch; install -d -m 700 -o nobody /tmp/watch; "
        f"printf '%s\\n' {' '.join(shlex.quote(value) for value in [*values, canary])} "
        "> /tmp/watch/secrets; chown nobody /tmp/watch/secrets; chmod 600 /tmp/watch/secrets; "
        f"setsid -f runuser -u nobody -- python3 -c {shlex.quote(WATCH_SECRETS)} "
        "</dev/null >/dev/null 2>&1; sleep 1; "
        f"(umask 022; echo {canary} > {CANARY_FILE}); sleep 0.02; rm {CANARY_FILE}",
    )
    assert started.returncode == 0, started.stderr


def secrets_seen(lab, host: str) -> dict:
    lab.on(host, "touch /tmp/watch/stop")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        report = lab.on(host, "cat /tmp/watch/report 2>/dev/null")
        if report.stdout:
            return json.loads(report.stdout)
        time.sleep(0.5)
    raise AssertionError(f"the watcher on {host} did not report")


def test_a_rotated_key_keeps_old_tokens_through_the_overlap_then_a_revoke_drops_it(lab, tmp_path):
    # The token lifetime, and so the old key's overlap: an old token minted just before the
    # rotation must outlive its rollout (39 s in the lab, over 45 s in a CI run).
    overlap = 80
    # Deployed by a sudo user, as a watcher on the hosts tries to read every secret uploaded.
    own = derived_inventory(tmp_path, own_secrets=True, ssh_user=SUDO_USER, token_max_ttl=overlap)
    watched = [lab.fleet.master.name, lab.fleet.workers[0].name]
    with_sudo_user(lab, [node.name for node in (*lab.fleet.masters, *lab.fleet.workers)])
    made = secrets.load(own)
    for host in watched:
        watch_secrets(lab, host, [made[name] for name in secrets.NAMES])
    try:
        # New secrets on purpose: the hosts run with the lab's.
        code, _, log = deploy(own, "--replace-secrets")
        assert code == 0, log[-3000:]
        for host in watched:
            report = secrets_seen(lab, host)
            assert report["seen"] == [CANARY_FILE] and report["rounds"] > 10, (host, report)
        old_key = secrets.load(own, create=False)["jwt_secret"]
        old_token = auth.mint(old_key, "before", overlap, subscribe=["*"], publish=["*"])
        rotation_started = time.monotonic()
        rotation = wssfleet("rotate-secret", "-i", str(own), "--json")
        assert rotation.returncode == 0, rotation.stdout[-2000:] + rotation.stderr[-2000:]
        rotated_in = time.monotonic() - rotation_started
        assert rotated_in < overlap - 10, f"the rotation took {rotated_in:.0f} s of {overlap}"
        assert json.loads(rotation.stdout)["ok"]
        stored = secrets.load(own, create=False)
        assert stored["jwt_secret"] != old_key and stored["jwt_previous_secret"] == old_key
        new_token = auth.mint(stored["jwt_secret"], "after", overlap, subscribe=["*"])
        assert connects(lab, old_token) and connects(lab, new_token)
        again = wssfleet("rotate-secret", "-i", str(own))
        assert again.returncode == 2 and "still accepted until" in again.stderr
        time.sleep(max(0.0, int(stored["jwt_previous_until"]) - time.time() + 1))
        # The overlap is over: the services refuse the old key by themselves, no deploy.
        late = auth.mint(old_key, "late", overlap, subscribe=["*"])
        assert refused_status(lab, late) == 401
        # The current key leaks: one command, one rollout, and it is gone with any other.
        revoked = wssfleet("rotate-secret", "-i", str(own), "--revoke", "--json")
        assert revoked.returncode == 0, revoked.stdout[-2000:] + revoked.stderr[-2000:]
        assert json.loads(revoked.stdout)["ok"]
        newest = secrets.load(own, create=False)
        assert "jwt_previous_secret" not in newest
        assert refused_status(lab, new_token) == 401
        assert connects(lab, auth.mint(newest["jwt_secret"], "newest", overlap, subscribe=["*"]))
        environment = lab.on(lab.fleet.workers[0].name, f"cat {SERVICE_ENVIRONMENT}").stdout
        assert 'WSSFLEET_JWT_PREVIOUS_SECRET=""' in environment.splitlines()
        assert stored["jwt_secret"] not in environment
    finally:
        code, _, log = deploy(LAB_INVENTORY, "--replace-secrets")
        assert code == 0, log[-3000:]


def connects(lab, token: str) -> bool:
    async def attempt():
        ws = await lab.connect_with_token(token)
        welcome = await next_frame(ws, 10)
        await ws.close()
        return welcome["type"] == "welcome"

    return run(attempt())


def refused_status(lab, token: str) -> int:
    async def attempt():
        with pytest.raises(InvalidStatus) as refused:
            await lab.connect_with_token(token)
        return refused.value.response.status_code

    return run(attempt())


def test_a_deploy_after_a_failed_certbot_run_asks_for_the_new_names(lab, tmp_path):
    master = lab.fleet.master.name
    extra_name = f"again.{lab.domain}"
    more_names = derived_inventory(tmp_path, extra_domains=[extra_name])
    # certbot fails once, after the deploy has decided to ask for the new name.
    broken = lab.on(
        master,
        # The pinned virtualenv's own certbot, which the deploy's link points at.
        'real=$(readlink -f /usr/local/bin/certbot) && mv "$real" "$real.real" && printf '
        "'#!/bin/sh\\necho certbot broken by the test >&2\\nexit 1\\n' > \"$real\" "
        '&& chmod 755 "$real"',
    )
    assert broken.returncode == 0, broken.stderr
    try:
        code, _, log = deploy(more_names)
        assert code != 0 and "certbot broken by the test" in log, log[-3000:]
    finally:
        lab.on(master, 'real=$(readlink -f /usr/local/bin/certbot) && mv "$real.real" "$real"')
    try:
        code, _, log = deploy(more_names)
        assert code == 0, log[-3000:]
        names = lab.on(master, f"openssl x509 -in {LIVE_CERTIFICATE} -noout -ext subjectAltName")
        assert f"DNS:{extra_name}" in names.stdout, names.stdout + names.stderr
        # Now that the certificate has the names, a deploy leaves it alone.
        code, report, log = deploy(more_names)
        assert code == 0, log[-3000:]
        assert [name for name, _ in changed(report) if "certificate" in name] == []
    finally:
        code, _, log = deploy()
        assert code == 0, log[-3000:]


def test_a_deploy_after_a_failed_install_installs_and_rolls_out_the_release(lab):
    worker = lab.fleet.workers[0].name
    # pip fails on this worker once: its global config demands hashes the install has not.
    broken = lab.on(worker, "printf '[install]\\nrequire-hashes = true\\n' > /etc/pip.conf")
    assert broken.returncode == 0, broken.stderr
    release_file = REPO / "service/wssfleet/__init__.py"
    try:
        version = '__version__ = "0.1.0"'
        with edited(release_file, version, f"{version}  # a release made by test_security"):
            try:
                code, report, log = deploy()
                assert code != 0, "the deploy succeeded although pip could not install"
                assert "require-hashes" in log or "Hashes are required" in log, log[-3000:]
            finally:
                lab.on(worker, "rm -f /etc/pip.conf")
            code, report, log = deploy()
            assert code == 0, log[-3000:]
            release = report["release"]
            installed = [n for n, host in changed(report) if n.endswith(f"{release} is installed")]
            assert installed, "the second deploy did not install the release"
            running = lab.on(worker, f"readlink {CURRENT}").stdout.strip()
            assert running.endswith(release), running
    finally:
        code, _, log = deploy()
        assert code == 0, log[-3000:]


def test_one_address_holds_at_most_haproxy_connections_per_source(lab, tmp_path, source_address):
    import socket
    import ssl

    capped = derived_inventory(tmp_path, haproxy_connections_per_source=30)
    crowded, other = source_address(11), source_address(12)
    context = lab.tls_context()

    def tls_from(address: str) -> ssl.SSLSocket | None:
        """A TLS connection from ``address``, or None if HAProxy refused it (a reset)."""
        raw = socket.socket()
        try:
            raw.bind((address, 0))
            raw.settimeout(5)
            raw.connect((lab.master_address, 443))
            return context.wrap_socket(raw, server_hostname=lab.domain)
        except (OSError, ssl.SSLError):
            raw.close()
            return None

    code, _, log = deploy(capped)
    assert code == 0, log[-3000:]
    held: list[ssl.SSLSocket] = []
    try:
        attempts = [tls_from(crowded) for _ in range(40)]
        held = [connection for connection in attempts if connection is not None]
        # 30 held at once; the rest refused before TLS. Another address is not affected.
        assert len(held) == 30, len(held)
        elsewhere = tls_from(other)
        assert elsewhere is not None
        elsewhere.close()
        held.pop().close()
        time.sleep(0.5)
        # One closes: its place is free again.
        again = tls_from(crowded)
        assert again is not None
        held.append(again)
    finally:
        for connection in held:
            connection.close()
        code, _, log = deploy()
        assert code == 0, log[-3000:]
