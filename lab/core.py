"""Bring the lab up, tear it down, tell its state; recover from whatever an earlier run left."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from lab import acme, dns, network, rootfs
from lab.config import (
    BRIDGE,
    CHECKOUT_DIR,
    DNS01_CA,
    DNS_PORT,
    KNOT_DNS_PORT,
    MACHINE_PREFIX,
    MACHINES_DIR,
    NFT_TABLE,
    PEBBLE_BIN,
    SHORT_LIVED_CA,
    SHORT_LIVED_PROFILE,
    STANDARD_CA,
    STATE_DIR,
    Host,
    LabError,
    LabSettings,
)
from lab.processes import (
    Tracked,
    all_pids,
    command_line,
    find,
    log,
    on_machine,
    parent_of,
    spawn,
    stop,
)

STATE_FILE = STATE_DIR / "state.json"
LAB_JSON = CHECKOUT_DIR / "lab.json"
KEY = CHECKOUT_DIR / "id_ed25519"
ACME_DIR = CHECKOUT_DIR / "acme"
DNS_DIR = CHECKOUT_DIR / "dns"
LOGS = CHECKOUT_DIR / "logs"
REQUIRED_COMMANDS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "nft": "nftables",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "nsenter": "util-linux",
}
BOOT_TIMEOUT = 120.0


def check_machine() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network bridge, nftables, containers): run it as root")
    missing = sorted(
        {package for command, package in REQUIRED_COMMANDS.items() if shutil.which(command) is None}
    )
    if missing:
        raise LabError(f"missing Debian packages {', '.join(missing)}: run 'make tools'")
    if not all((PEBBLE_BIN / name).is_file() for name in ("pebble", "pebble-challtestsrv")):
        raise LabError(f"Pebble is not unpacked in {PEBBLE_BIN}: run 'make tools'")
    if not dns.KNOTD.is_file():
        raise LabError(f"Knot is not unpacked in {dns.KNOTD.parent}: run 'make tools'")
    probe = subprocess.run(
        ["unshare", "--net", "--pid", "--mount", "--fork", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        raise LabError(
            "this machine cannot create network/PID/mount namespaces, which systemd-nspawn "
            f"needs ({probe.stderr.strip()}): run the lab on a Linux host or VM that allows them"
        )


def load_state() -> dict | None:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return None


def save_state(state: dict) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    temporary = STATE_FILE.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=2))
    temporary.replace(STATE_FILE)


def tracked(state: dict | None) -> list[Tracked]:
    return [Tracked(**entry) for entry in (state or {}).get("processes", [])]


def ensure_key() -> str:
    CHECKOUT_DIR.mkdir(mode=0o700, exist_ok=True)
    if not KEY.exists():
        on_machine(
            "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "wssfleet-lab", "-f", str(KEY)
        )
    return KEY.with_suffix(".pub").read_text()


def describe(settings: LabSettings) -> dict:
    return {
        "checkout": str(CHECKOUT_DIR.parent),
        "workers": settings.workers,
        "masters": settings.masters,
        "subnet": str(settings.subnet),
        "domain": settings.domain,
        "suite": settings.suite,
        "public_key": ensure_key(),
    }


def is_up(state: dict | None, settings: LabSettings) -> bool:
    if not state or state.get("lab") != describe(settings) or not state.get("complete"):
        return False
    if not all(process.alive for process in tracked(state)):
        return False
    return network.bridge_exists() and network.nat_exists() and LAB_JSON.exists()


def port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2):
            return True
    except OSError:
        return False


def up() -> None:
    check_machine()
    settings = LabSettings.from_environment()
    state = load_state()
    if is_up(state, settings):
        # A host that does not answer is one a test or an operator cut off on purpose (its
        # container still runs): rebuilding the lab under it would end every other host too.
        silent = [host.name for host in settings.hosts if not port_open(host.address, 22)]
        if silent:
            log(f"the lab is up; not answering SSH now: {', '.join(silent)}")
        else:
            log(f"the lab is up: {LAB_JSON}")
        return
    if state or leftovers(settings):
        log("clearing what an earlier lab left behind: " + ", ".join(leftovers(settings)))
        teardown(state, settings)
    started = time.monotonic()
    rootfs.build_base(settings)
    state = {"lab": describe(settings), "processes": [], "complete": False}
    save_state(state)
    state["ip_forward_before"] = network.create(settings)
    save_state(state)
    public_key = ensure_key()
    for host in settings.hosts:
        log(f"copying the base for {host.name} ({host.address})")
        rootfs.make_host(host, settings, public_key)
        process = boot(host)
        state["processes"].append(process.to_json())
        save_state(state)
    for host, entry in zip(settings.hosts, state["processes"], strict=True):
        wait_booted(host, Tracked(**entry))
    for host in settings.hosts:
        wait_ssh(host)
    log(
        "starting Pebble (ACME: a standard, a short-lived and a DNS-01 CA), its DNS, Knot "
        "(RFC 2136 updates) and a Cloudflare and Route 53 API stand-in on the bridge"
    )
    state["processes"].append(dns.start(settings, DNS_DIR, LOGS).to_json())
    state["processes"].append(dns.start_api(settings, DNS_DIR, LOGS).to_json())
    save_state(state)
    dns.wait_ready(settings)
    listener_ca = acme.make_listener_certificate(ACME_DIR, settings.gateway)
    for process in acme.start(settings, ACME_DIR, LOGS):
        state["processes"].append(process.to_json())
    save_state(state)
    acme.wait_ready(settings, listener_ca)
    acme.fetch_roots(settings, listener_ca, ACME_DIR)
    write_lab_json(settings, listener_ca)
    state["complete"] = True
    save_state(state)
    log(f"the lab is up in {time.monotonic() - started:.0f} s: {LAB_JSON}")


def boot(host: Host) -> Tracked:
    command = [
        "systemd-nspawn",
        "--quiet",
        "-D",
        str(host.root),
        "--boot",
        # No systemd-machined on this kind of machine: without these nspawn asks for it.
        "--register=no",
        "--keep-unit",
        "-M",
        host.machine,
        f"--network-bridge={BRIDGE}",
        "--resolv-conf=copy-host",
        "--timezone=copy",
        "--console=read-only",
        # A real server's systemd allows 524288 open files; this machine's shell may not.
        "--rlimit=NOFILE=1048576",
    ]
    return spawn(host.name, command, LOGS / f"{host.name}.console.log")


def container_init(process: Tracked) -> int | None:
    """The container's PID 1 as this machine sees it, once it has become systemd."""
    for pid in all_pids():
        if parent_of(pid) == process.pid and command_line(pid)[0].endswith("systemd"):
            return pid
    return None


def inside(init: int, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a command in a container's namespaces, without SSH (which may not be up yet)."""
    return subprocess.run(
        ["nsenter", "-t", str(init), "-m", "-u", "-i", "-n", "-p", *command],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_booted(host: Host, process: Tracked) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT
    while (init := container_init(process)) is None:
        if not process.alive or time.monotonic() > deadline:
            raise LabError(f"{host.name} did not start; see {LOGS / (host.name + '.console.log')}")
        time.sleep(0.2)
    log(f"waiting for {host.name} to boot")
    while True:
        try:
            result = inside(
                init,
                "systemctl",
                "is-system-running",
                "--wait",
                timeout=max(1.0, deadline - time.monotonic()),
            )
        except subprocess.TimeoutExpired:
            raise LabError(f"{host.name} did not finish booting in {BOOT_TIMEOUT:.0f} s") from None
        # Early on systemctl cannot reach systemd yet ('offline', or nothing and an error).
        if result.stdout.strip() not in ("offline", "") or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    if result.stdout.strip() != "running":
        failed = inside(init, "systemctl", "--failed", "--no-legend", "--plain").stdout.strip()
        raise LabError(
            f"{host.name} booted {result.stdout.strip()!r} {result.stderr.strip()}; "
            f"failed units:\n{failed}"
        )


def ssh_command(host: Host, *command: str) -> list[str]:
    return [
        "ssh",
        "-i",
        str(KEY),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=5",
        f"root@{host.address}",
        *command,
    ]


def wait_ssh(host: Host, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(
            ssh_command(host, "systemctl", "is-system-running"), capture_output=True, text=True
        )
        if result.stdout.strip() == "running":
            return
        if time.monotonic() > deadline:
            raise LabError(f"{host.name} does not answer SSH at {host.address}: {result.stderr}")
        time.sleep(0.5)


def write_lab_json(settings: LabSettings, listener_ca: Path) -> None:
    lab = {
        "domain": settings.domain,
        "bridge": BRIDGE,
        "gateway": settings.gateway,
        "master": {"name": settings.master.name, "address": settings.master.address},
        "masters": [{"name": host.name, "address": host.address} for host in settings.master_hosts],
        # Several masters: the floating address/prefix; clients reach front_door_address.
        "front_door": settings.front_door,
        "front_door_address": settings.front_door_address,
        "workers": [{"name": host.name, "address": host.address} for host in settings.worker_hosts],
        "ssh_user": "root",
        "ssh_key": str(KEY),
        "acme_directory": settings.acme_directory(),
        "acme_root_bundle": str(ACME_DIR / STANDARD_CA.root_file),
        "acme_roots": str(ACME_DIR / acme.ALL_ROOTS),
        "acme_ca_bundle": str(listener_ca),
        "acme_short_lived": {
            "directory": settings.acme_directory(SHORT_LIVED_CA),
            "root_bundle": str(ACME_DIR / SHORT_LIVED_CA.root_file),
            "profile": SHORT_LIVED_PROFILE,
            "lifetime_seconds": SHORT_LIVED_CA.profiles[SHORT_LIVED_PROFILE],
        },
        # DNS-01 through Knot: the CA, and what certbot's dns-rfc2136 plugin needs.
        "acme_dns01": {
            "directory": settings.acme_directory(DNS01_CA),
            "root_bundle": str(ACME_DIR / DNS01_CA.root_file),
            "server": settings.gateway,
            "port": KNOT_DNS_PORT,
            "zone": dns.zone_of(settings.domain),
            **{f"tsig_{key}": value for key, value in dns.tsig(DNS_DIR).items()},
            # The Cloudflare and Route 53 stand-in: its URLs, credentials and journal.
            "api": dns.api(DNS_DIR),
        },
    }
    LAB_JSON.write_text(json.dumps(lab, indent=2) + "\n")
    ssh_config = "".join(
        f"Host {host.name}\n  HostName {host.address}\n  User root\n  IdentityFile {KEY}\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n\n"
        for host in settings.hosts
    )
    (CHECKOUT_DIR / "ssh_config").write_text(ssh_config)


def orphans(settings: LabSettings) -> list[Tracked]:
    """Lab processes no state file records (it was lost), found by unmistakable arguments:
    nspawn on our bridge, Pebble with a lab config, its DNS on our bridge address."""
    found = find(f"--network-bridge={BRIDGE}")
    found += [p for p in find("/.lab/acme/pebble") if p.role == "pebble"]
    found += [p for p in find(f"{settings.gateway}:{DNS_PORT}") if p.role == "pebble-challtestsrv"]
    found += [p for p in find("/.lab/dns/knot.conf") if p.role == "knotd"]
    found += find("/.lab/dns/api.json")
    return found


def leftovers(settings: LabSettings) -> list[str]:
    """What an earlier lab left: processes, kernel state, root filesystems."""
    found = [f"process {p.role} ({p.pid})" for p in orphans(settings)]
    if network.bridge_exists():
        found.append(f"bridge {BRIDGE}")
    if network.nat_exists():
        found.append(f"nftables table {NFT_TABLE}")
    found += [str(path) for path in host_roots()]
    return found


def host_roots() -> list[Path]:
    if not MACHINES_DIR.exists():
        return []
    return [
        path
        for path in MACHINES_DIR.glob(MACHINE_PREFIX + "*")
        if path.is_dir() and path not in rootfs.base_dirs() and not path.name.endswith(".building")
    ]


def teardown(state: dict | None, settings: LabSettings) -> None:
    processes = tracked(state) + orphans(settings)
    stop(list({process.pid: process for process in processes}.values()))
    for root in host_roots():
        rootfs.remove_host(root)
    network.remove((state or {}).get("ip_forward_before"))
    STATE_FILE.unlink(missing_ok=True)


def down(purge: bool = False) -> None:
    check_machine()
    teardown(load_state(), LabSettings.from_environment())
    LAB_JSON.unlink(missing_ok=True)
    (CHECKOUT_DIR / "ssh_config").unlink(missing_ok=True)
    shutil.rmtree(ACME_DIR, ignore_errors=True)
    if purge:
        for base in rootfs.base_dirs():
            shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(STATE_DIR, ignore_errors=True)
        log("removed the cached base too")
    log("the lab is down")


def status() -> int:
    state = load_state()
    if not state:
        print("lab: down")
        return 1
    settings = LabSettings.from_environment()
    print(f"lab: {'up' if is_up(state, settings) else 'broken (run make lab-up)'}")
    for process in tracked(state):
        print(f"  {process.role:<22} pid {process.pid:<8} {'alive' if process.alive else 'dead'}")
    return 0
