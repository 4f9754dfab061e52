"""What the deploy reads from a host, as named pyinfra facts (pyinfra's facts/operations
split is the model): the roles decide their operations from these, and the rollout finds a
worker's instances with the same ``instance_ports``. Read-only: a fact never changes a host.
"""

from __future__ import annotations

from pyinfra.api import FactBase
from pyinfra.facts.hardware import Cpus

from wssfleet_control.commands import quote
from wssfleet_control.hostside import layout


class PythonPlatform(FactBase):
    """The host's python3 version and machine, which the wheels shipped to it must match."""

    def command(self) -> str:
        return "python3 -c 'import platform; print(platform.python_version(), platform.machine())'"

    def process(self, output) -> tuple[str, str]:
        version, machine = output[0].split()
        return version, machine


class LoadedUnits(FactBase):
    """The systemd units loaded on the host whose names match ``pattern``, whatever their
    state. ``systemctl list-units`` with a pattern answers in milliseconds, where pyinfra's
    SystemdStatus of every unit takes half a second on a small host."""

    def command(self, pattern: str) -> str:
        return f"systemctl list-units --all --plain --no-legend --full {quote(pattern)}"

    def process(self, output) -> set[str]:
        # A failed unit's line may start with a marker column.
        return {line.lstrip("●* ").split()[0] for line in output if line.lstrip("●* ")}

    @staticmethod
    def default() -> set[str]:
        return set()


class OpenFilesLimit(FactBase):
    """The most open files any service on this host can get: PID 1's hard limit."""

    def command(self) -> str:
        return "grep 'Max open files' /proc/1/limits"

    def process(self, output) -> int:
        return int(output[0].split()[4])


class MemoryKib(FactBase):
    """The host's memory, in KiB."""

    def command(self) -> str:
        return "awk '/^MemTotal:/ {print $2}' /proc/meminfo"

    def process(self, output) -> int:
        return int(output[0])


class Lines(FactBase):
    """A command's output lines; none when it fails or prints nothing."""

    def command(self, command: str) -> str:
        return f"{command} 2>/dev/null || true"

    def process(self, output) -> list[str]:
        return [line for line in output if line.strip()]

    @staticmethod
    def default() -> list[str]:
        return []


class FileMode(FactBase):
    """A path's octal mode ('600'), or None when it does not exist."""

    def command(self, path: str) -> str:
        return f"stat -c %a {quote(path)} 2>/dev/null || true"

    def process(self, output) -> str | None:
        return output[0].strip() if output else None


class Releases(FactBase):
    """An app's releases installed on a worker (the built-in service's unless ``releases``
    names another directory), newest first."""

    def command(self, releases: str = layout.RELEASES) -> str:
        return f"ls -1t {quote(releases)} 2>/dev/null || true"

    def process(self, output) -> list[str]:
        return [line.strip() for line in output if line.strip()]

    @staticmethod
    def default() -> list[str]:
        return []


class CurrentRelease(FactBase):
    """The release an app's ``current`` points at on a worker (the built-in service's unless
    ``current`` names another link), or None."""

    def command(self, current: str = layout.CURRENT) -> str:
        return f"readlink {quote(current)} || true"

    def process(self, output) -> str | None:
        target = output[0].strip() if output else ""
        return target.rsplit("/", 1)[-1] or None


def instance_ports(fleet, worker) -> list[int]:
    """The service ports of a worker host (a pyinfra Host): one instance per process, one
    process per CPU unless ``worker_processes`` says how many."""
    processes = fleet.settings.worker_processes
    return fleet.worker_ports(worker.get_fact(Cpus) if processes == "auto" else processes)


class InterfaceOf(FactBase):
    """The network interface that holds an address on this host ('' when none does)."""

    def command(self, address: str) -> str:
        return f"ip -o -4 addr show to {quote(address)} | awk '{{print $2; exit}}'"

    def process(self, output) -> str:
        return output[0].strip() if output else ""

    @staticmethod
    def default() -> str:
        return ""


class SentinelPrimary(FactBase):
    """Where the Sentinel on this host says the primary is ("address port"), or '' when none
    runs here or it does not answer (a first deploy)."""

    def command(self, port: int, primary_name: str, password_file: str, tls: bool) -> str:
        tls_options = f"--tls --cacert {layout.REDIS_TLS_DIRECTORY}/ca.pem " if tls else ""
        return (
            f'REDISCLI_AUTH="$(cat {quote(password_file)} 2>/dev/null)" timeout 5 redis-cli '
            f"--no-auth-warning {tls_options}-h 127.0.0.1 -p {int(port)} "
            "SENTINEL GET-MASTER-ADDR-BY-NAME "
            f"{quote(primary_name)} 2>/dev/null | paste -sd ' ' || true"
        )

    def process(self, output) -> str:
        answer = " ".join(output).split()
        return " ".join(answer) if len(answer) == 2 else ""

    @staticmethod
    def default() -> str:
        return ""
