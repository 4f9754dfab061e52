"""A CA of the tests' own, as an operator's would be: a root, an intermediate, and server
certificates from the intermediate (certificate_source="files")."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wssfleet_control.internal_tls import key_pem, key_usage


def pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def _signed(subject: str, key, issuer, issuer_key, start, end, ca: bool, names=()):
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    )
    if ca:
        builder = builder.add_extension(key_usage(certificate_sign=True), True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class OwnCA:
    """A root and an intermediate; ``issue`` makes server certificates."""

    name: str = "tests' own root"

    def __post_init__(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        self.root = _signed(
            self.name,
            self.root_key,
            root_name,
            self.root_key,
            now - datetime.timedelta(days=1),
            now + datetime.timedelta(days=3650),
            ca=True,
        )
        self.intermediate_key = ec.generate_private_key(ec.SECP256R1())
        self.intermediate = _signed(
            f"{self.name}: intermediate",
            self.intermediate_key,
            self.root.subject,
            self.root_key,
            now - datetime.timedelta(days=1),
            now + datetime.timedelta(days=1825),
            ca=True,
        )

    @property
    def root_pem(self) -> str:
        return pem(self.root)

    def issue(
        self, names: list[str], days: float = 90, starts_in_days: float = -1
    ) -> tuple[str, str]:
        """(the certificate then the intermediate, the key), PEM."""
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        start = now + datetime.timedelta(days=starts_in_days)
        leaf = _signed(
            names[0],
            key,
            self.intermediate.subject,
            self.intermediate_key,
            start,
            start + datetime.timedelta(days=days),
            ca=False,
            names=names,
        )
        return pem(leaf) + pem(self.intermediate), key_pem(key)
