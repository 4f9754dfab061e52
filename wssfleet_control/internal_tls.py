"""The deployment's own certificate authority, for traffic between its hosts (setting
``internal_tls``): HAProxy to the workers, the workers to Redis, the masters' HAProxy peers
to each other.

The CA and each host's certificate live with the inventory's other secrets (made on the control
machine by the first deploy that asks for them). A host's certificate names the host (its
inventory name, which HAProxy checks for each worker and each peer) and its private address,
lives a year, and is made again when its address or role changes or it has less than a month
left; the CA lives ten years. Certificates are per role: every host's serves (serverAuth); only
a master's also proves who it is as a client (clientAuth), because only the masters' HAProxy
peers ask for one, so a certificate taken from a worker cannot join the peers.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from collections.abc import Collection

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# Bumped when what a certificate must carry changes: every one is then made again.
FORMAT_KEY, FORMAT = "internal_tls_format", "4"
CA_KEY = "internal_ca_key"
CA_CERTIFICATE = "internal_ca_certificate"
HOST_PREFIX = "internal_tls:"
CA_DAYS, HOST_DAYS, RENEW_DAYS = 3650, 365, 30
NOT_YET = "(not made yet: the first deploy with internal_tls makes it)"


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    """A private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _certificate(subject: str, key, issuer_name: x509.Name, signer, days: int, **extensions):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    for extension, critical in extensions.values():
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA256())


def ensure(stored: dict[str, str], hosts: dict[str, str], clients: Collection[str] = ()) -> bool:
    """Make whatever is missing or due in ``stored``: the CA, and a certificate for each host
    (name: private address), one that also authenticates clients for the hosts in
    ``clients`` (the masters). True if anything was made."""
    made = False
    renew_all = stored.get(FORMAT_KEY) != FORMAT
    if renew_all or not stored.get(CA_KEY):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wssfleet internal CA")])
        # What strict verifiers (OpenSSL 3 with X509_STRICT, Python 3.13's default) require
        # of a CA: key identifiers and key usage.
        certificate = _certificate(
            "wssfleet internal CA",
            key,
            name,
            key,
            CA_DAYS,
            constraints=(x509.BasicConstraints(ca=True, path_length=0), True),
            subject_key=(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
            authority_key=(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                False,
            ),
            usage=(key_usage(certificate_sign=True), True),
        )
        stored[CA_KEY] = key_pem(key)
        stored[CA_CERTIFICATE] = certificate.public_bytes(serialization.Encoding.PEM).decode()
        stored[FORMAT_KEY] = FORMAT
        made = True
    ca_key = serialization.load_pem_private_key(stored[CA_KEY].encode(), None)
    ca = x509.load_pem_x509_certificate(stored[CA_CERTIFICATE].encode())
    for name, address in hosts.items():
        current = json.loads(stored.get(HOST_PREFIX + name, "{}"))
        client = name in clients
        fresh = (
            current
            and current["address"] == address
            and current.get("client", False) == client
            and not _due(current["certificate"])
        )
        if fresh and not renew_all:
            continue
        key = ec.generate_private_key(ec.SECP256R1())
        # The host's inventory name too: HAProxy checks it (verifyhost), so one host's
        # certificate does not pass for another's. No 127.0.0.1: the host's own tools
        # (redis-cli) check the chain, not the name, and an address every host shares
        # names no host.
        names = [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address(address))]
        purposes = [x509.ExtendedKeyUsageOID.SERVER_AUTH]
        if client:
            purposes.append(x509.ExtendedKeyUsageOID.CLIENT_AUTH)
        certificate = _certificate(
            name,
            key,
            ca.subject,
            ca_key,
            HOST_DAYS,
            names=(x509.SubjectAlternativeName(names), False),
            constraints=(x509.BasicConstraints(ca=False, path_length=None), True),
            subject_key=(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
            authority_key=(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                False,
            ),
            usage=(key_usage(certificate_sign=False), True),
            purposes=(x509.ExtendedKeyUsage(purposes), False),
        )
        stored[HOST_PREFIX + name] = json.dumps(
            {
                "address": address,
                "client": client,
                "key": key_pem(key),
                "certificate": certificate.public_bytes(serialization.Encoding.PEM).decode(),
            }
        )
        made = True
    return made


def key_usage(certificate_sign: bool) -> x509.KeyUsage:
    """A CA's key usage (signs certificates and CRLs), or a server's (signs handshakes)."""
    return x509.KeyUsage(
        digital_signature=not certificate_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=certificate_sign,
        crl_sign=certificate_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _due(certificate_pem: str) -> bool:
    certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
    left = certificate.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return left < datetime.timedelta(days=RENEW_DAYS)


def ca_certificate(stored: dict[str, str]) -> str:
    return stored.get(CA_CERTIFICATE, NOT_YET)


def host_material(stored: dict[str, str], name: str) -> tuple[str, str]:
    """A host's key and certificate (placeholders in a plan before the first deploy)."""
    current = json.loads(stored.get(HOST_PREFIX + name, "{}"))
    return current.get("key", NOT_YET), current.get("certificate", NOT_YET)
