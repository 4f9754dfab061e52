"""``wssfleet serve`` in a process forked from one that imported it already (helpers'
ServiceProcess). Imports only what the service does: the fork server preloads this module,
and each child unpickles its target from here."""

from __future__ import annotations

import os
import sys

import uvloop  # noqa: F401  (preloaded for the children)

from wssfleet import cli, config, node  # noqa: F401  (preloaded for the children)


def serve(env: dict[str, str], log: str) -> None:
    """``wssfleet serve`` as a fresh process runs it: env, stdout and stderr to ``log``."""
    output = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(output, 1)
    os.dup2(output, 2)
    os.close(output)
    sys.stdout = os.fdopen(1, "w", closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    os.environ.clear()
    os.environ.update(env)
    raise SystemExit(cli.main(["serve"]))
