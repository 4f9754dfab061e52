"""Root filesystems: one cached Debian base built with debootstrap, one copy per host."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

from lab.config import (
    BASE_PACKAGES,
    BASE_PREFIX,
    BASE_RECIPE,
    MACHINES_DIR,
    Host,
    LabError,
    LabSettings,
)
from lab.processes import log, on_machine

MARKER = ".wssfleet-base"
APT_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")


def debian_mirror() -> str:
    """The Debian mirror of this machine's own apt sources, read at run time."""
    candidates = []
    if APT_SOURCES.exists():
        candidates += re.findall(r"^URIs:\s*(\S+)", APT_SOURCES.read_text(), re.MULTILINE)
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        candidates += re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", legacy.read_text(), re.M)
    for uri in candidates:
        if "security" not in uri:
            return uri.rstrip("/")
    raise LabError(
        "no Debian mirror in this machine's apt sources (/etc/apt/sources.list.d/debian.sources "
        "or /etc/apt/sources.list): the lab builds its hosts from that mirror"
    )


def base_is_current(base: Path) -> bool:
    marker = base / MARKER
    return marker.exists() and marker.read_text().strip() == BASE_RECIPE


def base_dirs() -> list[Path]:
    """Every cached base, of any release (and the single base of wssfleet before 0.5)."""
    return [path for path in MACHINES_DIR.glob(BASE_PREFIX + "*") if path.is_dir()]


def build_base(settings: LabSettings) -> None:
    """debootstrap the release's base once (about a minute); later labs copy it in seconds."""
    base = settings.base_dir
    if base_is_current(base):
        return
    mirror = debian_mirror()
    # wssfleet before 0.5 cached a single Debian 12 base under the bare prefix.
    shutil.rmtree(MACHINES_DIR / BASE_PREFIX, ignore_errors=True)
    scratch = base.with_name(base.name + ".building")
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    log(
        f"building the {settings.release} ({settings.suite}) base with debootstrap from "
        f"{mirror} (about a minute, once)"
    )
    command = [
        "debootstrap",
        "--variant=minbase",
        f"--include={BASE_PACKAGES}",
        settings.suite,
        str(scratch),
        mirror,
    ]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise LabError(f"debootstrap failed; its last lines:\n{tail}")
    _prepare_base(scratch, settings.suite)
    (scratch / MARKER).write_text(BASE_RECIPE + "\n")
    scratch.rename(base)
    log(f"base ready in {time.monotonic() - started:.0f} s, cached in {base}")


def _prepare_base(root: Path, suite: str) -> None:
    # A real server's apt sees updates and security too: use this machine's sources,
    # which debootstrap's single-line sources.list lacks, with the host's release named.
    if APT_SOURCES.exists():
        sources = APT_SOURCES.read_text()
        machine_suite = re.search(r"^Suites:\s*([a-z]+)", sources, re.MULTILINE)
        if machine_suite:
            sources = re.sub(rf"\b{machine_suite.group(1)}\b", suite, sources)
            (root / "etc/apt/sources.list").unlink(missing_ok=True)
            (root / "etc/apt/sources.list.d/debian.sources").write_text(sources)
    # This machine may read a dated snapshot of the mirror; its apt must then not reject
    # old Release files, and neither must the hosts'.
    options = on_machine("apt-config", "dump", check=False).stdout.splitlines()
    keep = [line for line in options if re.match(r"Acquire::Check-(Valid-Until|Date) ", line)]
    if keep:
        (root / "etc/apt/apt.conf.d/99wssfleet-lab").write_text("\n".join(keep) + "\n")
    on_machine("chroot", str(root), "systemctl", "enable", "systemd-networkd", quiet=True)
    # Every host gets its own machine id and SSH host keys.
    (root / "etc/machine-id").write_text("")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()


def make_host(host: Host, settings: LabSettings, public_key: str) -> None:
    """A fresh copy of the base with the host's address, name, host keys and our SSH key."""
    gateway, prefix_length = settings.gateway, settings.subnet.prefixlen
    shutil.rmtree(host.root, ignore_errors=True)
    on_machine("cp", "-a", "--reflink=auto", str(settings.base_dir), str(host.root))
    (host.root / MARKER).unlink()
    (host.root / "etc/hostname").write_text(host.machine + "\n")
    (host.root / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{host.machine}\n::1\tlocalhost ip6-localhost\n"
    )
    # Sorts before nspawn's 80-container-host0.network, which would take a 169.254 address.
    network = host.root / "etc/systemd/network/10-lab.network"
    network.write_text(
        f"[Match]\nName=host0\n\n[Network]\nAddress={host.address}/{prefix_length}\n"
        f"Gateway={gateway}\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
    )
    ssh = host.root / "root/.ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    (ssh / "authorized_keys").write_text(public_key)
    (ssh / "authorized_keys").chmod(0o600)
    on_machine("ssh-keygen", "-q", "-A", "-f", str(host.root))


def remove_host(root: Path) -> None:
    unmount_below(root)
    shutil.rmtree(root, ignore_errors=True)


def mounts_below(root: Path) -> list[str]:
    prefix = str(root)
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if target == prefix or target.startswith(prefix + "/"):
            mounts.append(target)
    return mounts


def unmount_below(root: Path) -> None:
    for target in sorted(mounts_below(root), key=len, reverse=True):
        on_machine("umount", "-l", target, check=False)
