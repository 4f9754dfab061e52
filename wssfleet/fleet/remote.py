"""Run a command on a fleet host over SSH with the inventory's own SSH settings."""

from __future__ import annotations

import os
import subprocess

from wssfleet.fleet.inventory import Node

OPTIONS = {
    "ssh_known_hosts_file": "UserKnownHostsFile",
    "ssh_strict_host_key_checking": "StrictHostKeyChecking",
}


def ssh_arguments(node: Node) -> list[str]:
    options = node.ssh_options
    arguments = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"]
    if options.get("ssh_key"):
        arguments += ["-i", os.path.expanduser(options["ssh_key"])]
    if options.get("ssh_port"):
        arguments += ["-p", str(options["ssh_port"])]
    for key, option in OPTIONS.items():
        if key in options:
            arguments += ["-o", f"{option}={options[key]}"]
    user = options.get("ssh_user")
    return [*arguments, f"{user}@{node.ssh_host}" if user else node.ssh_host]


def run(node: Node, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a shell command as the inventory's SSH user (root, or through sudo)."""
    if node.data.get("_sudo") or node.ssh_options.get("ssh_user", "root") != "root":
        command = f"sudo -n sh -c {_quote(command)}"
    return subprocess.run(
        ["ssh", *ssh_arguments(node), command], capture_output=True, text=True, timeout=timeout
    )


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"
