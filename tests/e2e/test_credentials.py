"""What a compromised worker holds, tried from the worker against the lab's real Redis servers
and Sentinels: every credential in its service's environment is refused every admin command,
and a worker without a Sentinel holds no Sentinel, replication or operator secret at all."""

from __future__ import annotations

import base64
import json
import shlex
from urllib.parse import unquote, urlsplit

import pytest

from tests.attacks import PRIMARY_NAME, REDIS_ADMIN_COMMANDS, SENTINEL_ADMIN_COMMANDS
from wssfleet_control.hostside.layout import SERVICE_ENVIRONMENT

pytestmark = pytest.mark.timeout(300)

# Secrets only Sentinel and redis hosts, or the operator, may hold.
NOT_ON_A_WORKER = (
    "sentinel_peer_password",
    "sentinel_redis_password",
    "redis_replication_password",
    "redis_admin_password",
    "redis_monitor_password",
)

# Run on the worker with its own python3: one RESP connection per probe, logged in as the
# probe says; the first line of each reply (or the error that stopped it).
PROBE = r"""
import json, socket, sys
results = []
for host, port, user, password, words in json.loads(sys.argv[1]):
    try:
        with socket.create_connection((host, port), timeout=5) as link:
            replies = link.makefile("rb")
            def ask(*parts):
                encoded = [part.encode() for part in parts]
                link.sendall(b"*%d\r\n" % len(encoded) + b"".join(
                    b"$%d\r\n%s\r\n" % (len(part), part) for part in encoded))
                return replies.readline().decode().strip()
            logged_in = ask("AUTH", user, password)
            results.append(ask(*words) if logged_in == "+OK" else "AUTH " + logged_in)
    except OSError as error:
        results.append(f"unreachable: {error}")
print(json.dumps(results))
"""


def environment_of(lab, worker: str) -> dict[str, str]:
    text = lab.on(worker, f"cat {SERVICE_ENVIRONMENT}").stdout
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#")
    return {name: json.loads(value) if value.startswith('"') else value for name, value in pairs}


def probed(lab, worker: str, probes: list[tuple[str, int, str, str, tuple[str, ...]]]) -> list:
    script = base64.b64encode(PROBE.encode()).decode()
    argument = shlex.quote(json.dumps(probes))
    command = f"echo {script} | base64 -d > /tmp/probe.py && python3 /tmp/probe.py {argument}"
    result = lab.on(worker, command)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_every_credential_on_a_worker_is_refused_every_admin_command(lab):
    fleet = lab.fleet
    assert not fleet.settings.internal_tls, "the probe speaks plain RESP, as the lab does"
    settings = fleet.settings
    for worker in fleet.workers:
        environment = environment_of(lab, worker.name)
        redis_url = urlsplit(environment["WSSFLEET_REDIS_URL"])
        redis_user, redis_password = unquote(redis_url.username), unquote(redis_url.password)
        sentinel_user = environment["WSSFLEET_REDIS_SENTINEL_USER"]
        sentinel_password = environment["WSSFLEET_REDIS_SENTINEL_PASSWORD"]
        probes, expected = [], []
        for node in fleet.redis_nodes:
            where = (node.address, settings.redis_port, redis_user, redis_password)
            probes.append((*where, ("PING",)))
            expected.append("+PONG")
            for command in REDIS_ADMIN_COMMANDS:
                probes.append((*where, command))
                # DEBUG is off for every remote client, whoever asks.
                expected.append(
                    "-ERR DEBUG command not allowed" if command[0] == "DEBUG" else "-NOPERM"
                )
        for node in fleet.sentinels:
            where = (node.address, settings.redis_sentinel_port, sentinel_user, sentinel_password)
            probes.append((*where, ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", PRIMARY_NAME)))
            expected.append("*2")
            for command in SENTINEL_ADMIN_COMMANDS:
                probes.append((*where, command))
                expected.append("-NOPERM")
        answers = probed(lab, worker.name, probes)
        for probe, wanted, answer in zip(probes, expected, answers, strict=True):
            assert answer.startswith(wanted), (worker.name, probe[0], probe[-1], answer)


def test_a_worker_without_a_sentinel_holds_no_other_redis_secret(lab):
    fleet = lab.fleet
    secrets = fleet.secrets()
    sentinel_hosts = {node.name for node in fleet.sentinels}
    bare = [worker for worker in fleet.workers if worker.name not in sentinel_hosts]
    assert bare, "the lab has a worker without a Sentinel"
    patterns = "\n".join(secrets[name] for name in NOT_ON_A_WORKER)
    encoded = base64.b64encode(patterns.encode()).decode()
    for worker in bare:
        found = lab.on(
            worker.name,
            f"echo {encoded} | base64 -d > /tmp/patterns && "
            "grep -rlF -f /tmp/patterns /etc /opt /srv /var/lib /root /home 2>/dev/null; "
            "rm -f /tmp/patterns",
        )
        assert found.stdout == "", (worker.name, found.stdout)
