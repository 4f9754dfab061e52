"""internal_tls on loopback: a service process serving TLS with a certificate of the deployment's
own CA, publishing through a redis-server that speaks TLS only, a client checking that CA."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from roles.haproxy import Backend
from tests.frames import next_frame
from tests.processes import RedisServer
from tests.unit.helpers import ORIGIN, haproxy_answer, rendered_haproxy, token, wait_until
from wssfleet_control import internal_tls


def material(directory: Path) -> Path:
    """The CA and a certificate for 127.0.0.1, as a deploy makes them, written out."""
    stored: dict[str, str] = {}
    assert internal_tls.ensure(stored, {"local": "127.0.0.1"})
    assert not internal_tls.ensure(stored, {"local": "127.0.0.1"})  # kept, not made again
    key, certificate = internal_tls.host_material(stored, "local")
    (directory / "ca.pem").write_text(internal_tls.ca_certificate(stored))
    (directory / "cert.pem").write_text(certificate)
    (directory / "key.pem").write_text(key)
    return directory


class TlsRedis(RedisServer):
    """The unit tests' redis-server, with TLS only, as internal_tls configures it."""

    def __init__(self, directory: Path, tls: Path) -> None:
        super().__init__(directory)
        self.tls = tls

    def listening(self) -> list[str]:
        return [
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(self.tls / "cert.pem"),
            "--tls-key-file",
            str(self.tls / "key.pem"),
            "--tls-ca-cert-file",
            str(self.tls / "ca.pem"),
            "--tls-auth-clients",
            "no",
        ]

    def cli(self, *command: str, as_worker: bool = False) -> object:
        import redis

        from roles.redis import ADMIN_REDIS_USER

        with redis.Redis(
            host="127.0.0.1",
            port=self.port,
            username=ADMIN_REDIS_USER,
            password=self.admin_password,
            ssl=True,
            ssl_ca_certs=str(self.tls / "ca.pem"),
        ) as client:
            return client.execute_command(*command)


def test_a_service_serves_tls_and_publishes_through_a_tls_only_redis(tmp_path, start_service):
    tls = material(tmp_path)
    redis_server = TlsRedis(tmp_path, tls)
    redis_server.start()
    try:
        ca = urllib.parse.quote(str(tls / "ca.pem"), safe="")
        url = redis_server.url.replace("redis://", "rediss://") + f"?ssl_ca_certs={ca}"
        service = start_service(
            url,
            WSSFLEET_TLS_CERTIFICATE_FILE=str(tls / "cert.pem"),
            WSSFLEET_TLS_KEY_FILE=str(tls / "key.pem"),
        )
        context = ssl.create_default_context(cafile=str(tls / "ca.pem"))
        # As Python 3.13 checks by default (Debian 13's hosts): key identifiers and usages.
        context.verify_flags |= ssl.VERIFY_X509_STRICT

        async def scenario() -> tuple[dict, dict]:
            address = f"wss://127.0.0.1:{service.port}/ws/room?token={token()}"
            async with connect(address, origin=ORIGIN, ssl=context) as ws:
                await next_frame(ws)
                assert (await next_frame(ws))["type"] == "subscribed"
                await ws.send(
                    json.dumps({"type": "publish", "channel": "room", "data": 1, "id": 1})
                )
                first, second = await next_frame(ws), await next_frame(ws)
                return first, second

        answers = asyncio.run(asyncio.wait_for(scenario(), 20))
        assert {answer["type"] for answer in answers} == {"published", "message"}
        assert redis_server.cli("XLEN", "wssfleet:history:room") == 1

        # A client that does not know the CA is refused: the certificate is checked.
        async def unchecked() -> None:
            await connect(f"wss://127.0.0.1:{service.port}/ws", origin=ORIGIN)

        with pytest.raises(ssl.SSLCertVerificationError):
            asyncio.run(unchecked())
    finally:
        redis_server.stop()


def test_a_hosts_certificate_is_made_again_when_its_address_changes(tmp_path):
    from cryptography import x509

    stored: dict[str, str] = {}
    internal_tls.ensure(stored, {"worker1": "10.0.0.5"})
    first = internal_tls.host_material(stored, "worker1")[1]
    assert internal_tls.ensure(stored, {"worker1": "10.0.0.6"})
    second = internal_tls.host_material(stored, "worker1")[1]
    names = x509.load_pem_x509_certificate(second.encode()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert second != first
    # Its name and address; not 127.0.0.1, which every host shares.
    assert [str(ip) for ip in names.value.get_values_for_type(x509.IPAddress)] == ["10.0.0.6"]
    assert names.value.get_values_for_type(x509.DNSName) == ["worker1"]


def test_only_a_masters_certificate_authenticates_a_client(tmp_path):
    """Certificates per role: every host's serves; only the masters' (HAProxy peers) also
    prove who they are as clients, and a host that becomes a master gets a new one."""
    from cryptography import x509

    def purposes(name: str) -> list[str]:
        pem = internal_tls.host_material(stored, name)[1]
        usage = x509.load_pem_x509_certificate(pem.encode()).extensions.get_extension_for_class(
            x509.ExtendedKeyUsage
        )
        return [purpose.dotted_string for purpose in usage.value]

    server, client = (
        x509.ExtendedKeyUsageOID.SERVER_AUTH.dotted_string,
        x509.ExtendedKeyUsageOID.CLIENT_AUTH.dotted_string,
    )
    stored: dict[str, str] = {}
    hosts = {"master": "10.0.0.1", "worker1": "10.0.0.5"}
    internal_tls.ensure(stored, hosts, clients=["master"])
    assert purposes("master") == [server, client]
    assert purposes("worker1") == [server]
    assert not internal_tls.ensure(stored, hosts, clients=["master"])
    assert internal_tls.ensure(stored, hosts, clients=["master", "worker1"])
    assert purposes("worker1") == [server, client]


def peer_haproxy(directory: Path, me: str, certificate: str, masters: list) -> tuple:
    """A HAProxy whose peers section is the deploy's, rendered for master ``me`` presenting
    ``certificate`` (a PEM file's name in ``directory``); (process, admin socket)."""
    rendered = rendered_haproxy(
        [],
        directory / "unused.pem",
        internal_ca=str(directory / "ca.pem"),
        internal_ca_digest="-",
        peers=masters,
        local_peer=me,
        peer_certificate=str(directory / certificate),
        peer_certificate_digest="-",
    )
    peers = "peers " + rendered.split("\npeers ", 1)[1].split("\n\n", 1)[0]
    admin = directory / f"{me}-{certificate}.sock"
    config = directory / f"{me}-{certificate}.cfg"
    config.write_text(
        f"global\n    stats socket {admin} mode 600 level admin\n    localpeer {me}\n"
        f"{peers}\n"
        "defaults\n    mode http\n    timeout client 5s\n    timeout connect 5s\n"
        "    timeout server 5s\nbackend counters\n"
        "    stick-table type ipv6 size 1k expire 60s store gpc0 peers wssfleet_masters\n"
    )
    process = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stderr=subprocess.PIPE)
    return process, admin


def counter_on(admin: Path) -> str | None:
    if not admin.exists():
        return None
    table = haproxy_answer(admin, "show table counters")
    return next((line for line in table.splitlines() if "key=::1" in line), None)


def test_haproxy_peers_speak_tls_and_only_a_masters_certificate_joins(tmp_path):
    """internal_tls: the masters' shared admission counters go over TLS, each master checked
    for its name; a host holding only a worker's certificate (a compromised worker, posing
    at a master's address) can neither send counters nor receive them."""
    from types import SimpleNamespace

    stored: dict[str, str] = {}
    hosts = {"m1": "127.0.0.2", "m2": "127.0.0.3", "w1": "127.0.0.4"}
    internal_tls.ensure(stored, hosts, clients=["m1", "m2"])
    (tmp_path / "ca.pem").write_text(internal_tls.ca_certificate(stored))
    for name in hosts:
        key, certificate = internal_tls.host_material(stored, name)
        (tmp_path / f"{name}.pem").write_text(certificate + key)
    masters = [SimpleNamespace(name=name, address=hosts[name]) for name in ("m1", "m2")]

    def pair(second_certificate: str) -> tuple[str | None, str]:
        """m1 and m2 (m2 presenting ``second_certificate``); a counter set on m2, as m1
        then sees it (None if it never arrives), and m1's view of its peer."""
        first, first_admin = peer_haproxy(tmp_path, "m1", "m1.pem", masters)
        second, second_admin = peer_haproxy(tmp_path, "m2", second_certificate, masters)
        try:
            wait_until(lambda: first_admin.exists() and second_admin.exists(), 10, "both up")
            haproxy_answer(second_admin, "set table counters key ::1 data.gpc0 7")
            try:
                seen = wait_until(lambda: counter_on(first_admin), 6, "the counter on m1")
            except AssertionError:
                seen = None
            return seen, haproxy_answer(first_admin, "show peers")
        finally:
            for process, admin in ((first, first_admin), (second, second_admin)):
                process.terminate()
                process.communicate(timeout=10)
                admin.unlink(missing_ok=True)

    seen, peers = pair("m2.pem")
    assert seen and "gpc0=7" in seen, peers
    assert "id=m2(remote,active)" in peers and "last_status=ESTA" in peers, peers
    seen, peers = pair("w1.pem")
    assert seen is None, f"a worker's certificate joined the peers: {seen}"
    assert "last_status=ESTA" not in peers, peers


def test_haproxy_accepts_a_workers_certificate_only_for_that_worker(tmp_path, start_service):
    """With internal_tls, HAProxy checks each worker's certificate for that worker's name
    (verifyhost): any certificate of the deployment's CA passed for any worker before, so a
    host that stole one could stand in for another."""
    tls = material(tmp_path)
    service = start_service(
        WSSFLEET_TLS_CERTIFICATE_FILE=str(tls / "cert.pem"),
        WSSFLEET_TLS_KEY_FILE=str(tls / "key.pem"),
    )
    rendered = rendered_haproxy(
        [
            Backend("local-ok", "127.0.0.1", service.port, "local"),
            Backend("other-refused", "127.0.0.1", service.port, "other"),
        ],
        tmp_path / "unused.pem",
        internal_ca=str(tls / "ca.pem"),
        internal_ca_digest="-",
    )
    # The workers' backend as rendered (its checks, its TLS, each server's line), alone.
    backend = rendered.split("\nbackend workers\n", 1)[1].split("\nbackend ", 1)[0]
    servers = [line for line in backend.splitlines() if line.strip().startswith("server ")]
    assert all("verifyhost" in line for line in servers), servers
    admin = tmp_path / "admin.sock"
    config = tmp_path / "backends.cfg"
    config.write_text(
        f"global\n    stats socket {admin} mode 600 level admin\n"
        "defaults\n    mode http\n    timeout client 5s\n    timeout connect 5s\n"
        f"    timeout server 5s\nbackend workers\n{backend}\n"
    )
    haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stderr=subprocess.PIPE)
    try:
        states = wait_until(lambda: checked_states(admin), 15, "both servers checked")
    finally:
        haproxy.terminate()
        _, errors = haproxy.communicate(timeout=10)
    assert haproxy.returncode in (0, -15, 143), errors.decode()[-2000:]
    assert states == {"local-ok": "UP", "other-refused": "DOWN"}, states


def checked_states(admin: Path) -> dict[str, str] | None:
    """Each server's state once both were checked (a fresh server is UP until its checks
    fail), else None."""
    if not admin.exists():
        return None
    table = haproxy_answer(admin, "show stat")
    rows = [line.split(",") for line in table.splitlines() if line.startswith("workers,")]
    states = {row[1]: row[17] for row in rows if row[1] not in ("BACKEND", "FRONTEND")}
    checked = all(row[36] not in ("", "INI") for row in rows if row[1] in states)
    return states if checked and states.get("other-refused") == "DOWN" else None
