"""Long-running lab processes, tracked by id and start time so only ours are ever signalled."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path


def log(message: str) -> None:
    print(f"lab: {message}", file=sys.stderr, flush=True)


def on_machine(
    *command: str, check: bool = True, quiet: bool = False
) -> subprocess.CompletedProcess:
    """Run a short command; on failure raise with its output, so errors say what broke."""
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {output}")
    if not quiet and result.returncode != 0:
        log(f"{command[0]}: {result.stderr.strip()}")
    return result


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may contain spaces)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def start_time(pid: int) -> int | None:
    """The kernel's start time of a process (clock ticks since boot), or None if it is gone."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def parent_of(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


@dataclass(frozen=True)
class Tracked:
    """A process the lab started: its role, id and start time."""

    role: str
    pid: int
    started: int

    @property
    def alive(self) -> bool:
        return start_time(self.pid) == self.started

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def spawn(
    role: str, command: list[str], log_file: Path, env: dict[str, str] | None = None
) -> Tracked:
    """Start a process that outlives this command (its own session), logging to a file."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as output:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    time.sleep(0.05)
    started = start_time(process.pid)
    if started is None or process.poll() is not None:
        last_lines = log_file.read_text(errors="replace").strip().splitlines()[-5:]
        # nspawn exits at once when another lab (another checkout, or a PID namespace this
        # one cannot see) still holds the machine's lock: the log's last lines say so.
        ending = "\n".join(last_lines)
        raise RuntimeError(f"{role} exited at once; {log_file} ends with:\n{ending}")
    return Tracked(role, process.pid, started)


def stop(processes: list[Tracked], grace_seconds: float = 20.0) -> None:
    """SIGTERM each live process, wait, then SIGKILL what is left."""
    live = [process for process in processes if process.alive]
    for process in live:
        os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and any(process.alive for process in live):
        time.sleep(0.2)
    for process in live:
        if process.alive:
            log(f"{process.role} (pid {process.pid}) ignored SIGTERM; killing it")
            # nspawn's container init is its child, in a session and PID namespace of its own:
            # left alone it would outlive nspawn, with the host's network. Killing a PID
            # namespace's init ends every process in it.
            for child in children_of(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            os.kill(process.pid, signal.SIGKILL)


def children_of(pid: int) -> list[int]:
    return [child for child in all_pids() if parent_of(child) == pid]


def find(marker: str) -> list[Tracked]:
    """Processes whose command line contains ``marker``: lab processes whose record was lost."""
    found = []
    for pid in all_pids():
        if pid == os.getpid():
            continue
        arguments = command_line(pid)
        if any(marker in argument for argument in arguments[1:]):
            started = start_time(pid)
            if started is not None:
                found.append(Tracked(Path(arguments[0]).name, pid, started))
    return found
