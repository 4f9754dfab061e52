"""A command on the control machine that prints what the deploy needs from a vault (the
settings ``secrets_command`` and ``certificate_command``: ``pass``, ``op``, ``vault kv get``)."""

from __future__ import annotations

import shlex
import subprocess

COMMAND_SECONDS = 60


class CommandError(RuntimeError):
    """The command could not run or failed; the message names the setting."""


def printed_by(command: str, setting: str) -> str:
    """What ``command`` (the setting ``setting``) prints, run with no input; CommandError,
    naming the setting and the command's last words, when it cannot run or fails."""
    try:
        printed = subprocess.run(
            shlex.split(command),
            capture_output=True,
            text=True,
            timeout=COMMAND_SECONDS,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise CommandError(f"{setting} {command!r} could not run: {error}") from None
    if printed.returncode != 0:
        said = (printed.stderr.strip().splitlines() or ["(nothing on stderr)"])[-1]
        raise CommandError(f"{setting} {command!r} failed (exit {printed.returncode}): {said}")
    return printed.stdout
