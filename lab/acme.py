"""Pebble, Let's Encrypt's test server, as the lab's ACME CA; pebble-challtestsrv as its DNS."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lab.config import (
    ACME_SERVERS,
    CHALLTESTSRV_MANAGEMENT_PORT,
    DNS_PORT,
    PEBBLE_BIN,
    AcmeServer,
    LabError,
    LabSettings,
)
from lab.processes import Tracked, spawn


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_listener_certificate(directory: Path, address: str) -> Path:
    """A private CA and the certificate of Pebble's HTTPS listener (SAN: its address).

    certbot must trust this CA to talk to Pebble, as it trusts the web PKI for Let's Encrypt.
    Returns the CA bundle path.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wssfleet lab ACME listener CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        # Python 3.13's strict verification (Debian 13's certbot) requires the key identifiers.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    bundle = directory / "listener-ca.pem"
    bundle.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "listener.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    _write_key(key, directory / "listener.key")
    return bundle


def start(settings: LabSettings, directory: Path, logs: Path) -> list[Tracked]:
    """Start the DNS stand-in and every Pebble on the bridge address."""
    gateway = settings.gateway
    dns = spawn(
        "pebble-challtestsrv",
        [
            str(PEBBLE_BIN / "pebble-challtestsrv"),
            "-defaultIPv4",
            settings.front_door_address,
            "-defaultIPv6",
            "",
            "-dnsserver",
            f"{gateway}:{DNS_PORT}",
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            f"{gateway}:{CHALLTESTSRV_MANAGEMENT_PORT}",
        ],
        logs / "challtestsrv.log",
    )
    return [dns, *(_start_pebble(settings, server, directory, logs) for server in ACME_SERVERS)]


def _start_pebble(
    settings: LabSettings, server: AcmeServer, directory: Path, logs: Path
) -> Tracked:
    gateway = settings.gateway
    config = directory / f"{server.name}.json"
    config.write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"{gateway}:{server.port}",
                    "managementListenAddress": f"{gateway}:{server.management_port}",
                    "certificate": str(directory / "listener.pem"),
                    "privateKey": str(directory / "listener.key"),
                    "httpPort": 80,
                    "tlsPort": 443,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                    "profiles": {
                        name: {"description": f"{name} (lab)", "validityPeriod": lifetime}
                        for name, lifetime in server.profiles.items()
                    },
                }
            },
            indent=2,
        )
    )
    return spawn(
        "pebble",
        [
            str(PEBBLE_BIN / "pebble"),
            "-config",
            str(config),
            "-dnsserver",
            f"{gateway}:{server.dns_port}",
        ],
        logs / f"{server.name}.log",
        # No random sleeps before validation, no deliberate bad nonces: fast, repeatable tests.
        # The DNS-01 CA reuses no authorization (Pebble reuses half at random): each order is
        # proved anew through the DNS, so a test sees every provider's records written.
        env={
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",
            **({} if server.reuses_authorizations else {"PEBBLE_AUTHZREUSE": "0"}),
        },
    )


def wait_ready(settings: LabSettings, listener_ca: Path, timeout: float = 30.0) -> None:
    context = ssl.create_default_context(cafile=str(listener_ca))
    deadline = time.monotonic() + timeout
    for server in ACME_SERVERS:
        url = settings.acme_directory(server)
        while True:
            try:
                with urllib.request.urlopen(url, context=context, timeout=3) as reply:
                    if "newOrder" in json.loads(reply.read()):
                        break
            except (urllib.error.URLError, OSError, ValueError) as error:
                if time.monotonic() > deadline:
                    raise LabError(f"Pebble does not answer at {url}: {error}") from None
            time.sleep(0.3)


ALL_ROOTS = "roots.pem"


def fetch_roots(settings: LabSettings, listener_ca: Path, directory: Path) -> None:
    """Pebble makes a new root at each start; save each to verify what it issues."""
    context = ssl.create_default_context(cafile=str(listener_ca))
    roots = b""
    for server in ACME_SERVERS:
        url = f"https://{settings.gateway}:{server.management_port}/roots/0"
        with urllib.request.urlopen(url, context=context, timeout=10) as reply:
            root = reply.read()
        (directory / server.root_file).write_bytes(root)
        roots += root
    # Both CAs' roots: what the lab's masters check each other's certificates against.
    (directory / ALL_ROOTS).write_bytes(roots)
