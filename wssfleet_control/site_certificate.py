"""The certificate the masters serve when no ACME server issues it (setting
``certificate_source``): the operator's own files (``files``) or the deployment's private CA
(``private_ca``). Both are made ready and checked on the control machine before any host is
touched; the deploy installs the result on every master (roles/certificates.py, ``provided``)
and swaps it into the running HAProxy.

``files``: ``certificate_file`` (the leaf, then its intermediates) and ``certificate_key_file``,
paths on the control machine beside the inventory, or ``certificate_command``, whose output
holds both (a vault). They must pass ``check``: the key is the certificate's, each certificate
is issued by the next, the chain ends at a root or at an issuer this machine trusts, every
domain is named, and it is valid now.

``private_ca``: a CA made once on the control machine and kept with the inventory's other
secrets, constrained to the fleet's domains (a client that trusts it trusts it for those names
and nothing else). It issues the masters' certificate for LEAF_DAYS days, and its successor,
valid from RENEW_DAYS before the current one ends: the masters' cron swaps that in when it
becomes valid (hostside/provided_renewal.py), so the CA's key never leaves this machine. A
deploy once the current one has RENEW_DAYS or fewer left makes the successor current and
issues a new successor; other names get a new certificate at once.
"""

from __future__ import annotations

import datetime
import itertools
import json
import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wssfleet_control.internal_tls import key_pem, key_usage
from wssfleet_control.vault import CommandError, printed_by

FILES, PRIVATE_CA = "files", "private_ca"
CA_KEY, CA_CERTIFICATE, ISSUED = "site_ca_key", "site_ca_certificate", "site_certificate"
CA_DAYS, LEAF_DAYS, RENEW_DAYS = 3650, 90, 30
# `make status` (and the alert, in its rule) warn this long before a provided one expires.
WARNING_DAYS = 14
NOT_YET = "(not made yet: the first deploy with certificate_source=private_ca makes it)"


class CertificateError(ValueError):
    """The certificate to serve is unusable; the message names it and what is wrong."""


@dataclass(frozen=True)
class Material:
    """A certificate chain (leaf first) and its key, both PEM, and where they came from."""

    chain: str
    key: str
    origin: str
    # The private CA's successor: valid from RENEW_DAYS before this one ends, when the
    # masters' timer swaps it in (hostside/provided_renewal.py) if no deploy came first.
    next_chain: str = ""
    next_key: str = ""

    @property
    def fingerprint(self) -> str:
        """The leaf's SHA-256, as ``openssl x509 -fingerprint -sha256`` prints it."""
        if self.chain == NOT_YET:
            return NOT_YET
        leaf = x509.load_pem_x509_certificates(self.chain.encode())[0]
        digest = leaf.fingerprint(hashes.SHA256())
        return ":".join(f"{byte:02X}" for byte in digest)


def material(settings, inventory_path: str, stored: dict[str, str]) -> Material | None:
    """What the masters serve for ``settings.certificate_source``, checked; None for ACME.
    ``stored``: the deployment's secrets (the private CA's certificate is there)."""
    if settings.certificate_source == FILES:
        return from_files(settings, Path(inventory_path).resolve().parent)
    if settings.certificate_source == PRIVATE_CA:
        issued = stored.get(ISSUED)
        if not issued or issued == NOT_YET:
            return Material(NOT_YET, NOT_YET, "the private CA")
        current = json.loads(issued)
        return Material(
            current["chain"],
            current["key"],
            "the private CA",
            current.get("next_chain", ""),
            current.get("next_key", ""),
        )
    return None


def from_files(settings, base: Path) -> Material:
    """The operator's certificate and key (certificate_file and certificate_key_file, or what
    certificate_command prints), checked for every domain."""
    if settings.certificate_command:
        try:
            printed = printed_by(settings.certificate_command, "certificate_command")
        except CommandError as error:
            raise CertificateError(str(error)) from None
        origin = f"certificate_command {settings.certificate_command!r}"
        chain, key = _split(printed, origin)
        check(chain, key, settings.domains, origin)
        return Material(chain, key, origin)
    chain_path = base / Path(settings.certificate_file).expanduser()
    key_path = base / Path(settings.certificate_key_file).expanduser()
    texts = []
    for setting, path in (("certificate_file", chain_path), ("certificate_key_file", key_path)):
        try:
            texts.append(path.read_text())
        except (OSError, UnicodeDecodeError) as error:
            raise CertificateError(
                f"setting {setting}: {path} cannot be read ({error.__class__.__name__}): give "
                "a PEM file on this machine (relative paths are from the inventory's directory)"
            ) from None
    chain, _ = _split(texts[0], str(chain_path), need_key=False)
    _, key = _split(texts[1], str(key_path), need_chain=False)
    check(chain, key, settings.domains, f"{chain_path} with key {key_path}")
    return Material(chain, key, f"{chain_path}")


def _blocks(text: str, kind: str) -> list[str]:
    """The PEM blocks of ``text`` whose label ends with ``kind``, in order."""
    found, current = [], None
    for line in text.splitlines():
        if line.startswith("-----BEGIN ") and line.rstrip("-").endswith(kind):
            current = [line]
        elif current is not None:
            current.append(line)
            if line.startswith("-----END "):
                found.append("\n".join(current) + "\n")
                current = None
    return found


def _split(text: str, where: str, need_key=True, need_chain=True) -> tuple[str, str]:
    """(the certificates, the private key) in ``text``, PEM."""
    certificates = _blocks(text, "CERTIFICATE")
    keys = _blocks(text, "PRIVATE KEY")
    if need_chain and not certificates:
        raise CertificateError(f"{where} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    if need_key and len(keys) != 1:
        raise CertificateError(
            f"{where} holds {len(keys)} PEM private keys: give exactly one, unencrypted"
        )
    return "".join(certificates), "".join(keys)


def check(
    chain_pem: str,
    key_pem: str,
    domains: tuple[str, ...] | list[str],
    where: str,
    now: datetime.datetime | None = None,
) -> None:
    """Raise CertificateError, naming ``where`` and the fault, unless the chain and key can be
    served for ``domains`` now."""
    now = now or datetime.datetime.now(datetime.UTC)
    try:
        chain = x509.load_pem_x509_certificates(chain_pem.encode())
    except ValueError as error:
        raise CertificateError(f"{where}: a certificate cannot be read: {error}") from None
    if "ENCRYPTED" in key_pem:
        raise CertificateError(
            f"{where}: the private key is encrypted and HAProxy cannot ask for its passphrase: "
            "decrypt it (openssl pkey -in KEY -out KEY.plain) and keep that file private"
        )
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), None)
    except (ValueError, TypeError) as error:
        raise CertificateError(f"{where}: the private key cannot be read: {error}") from None
    leaf = chain[0]
    public = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*public) != leaf.public_key().public_bytes(*public):
        raise CertificateError(
            f"{where}: the private key is not the certificate's ({_name(leaf.subject)}): give "
            "the key the certificate was issued for"
        )
    if now < leaf.not_valid_before_utc:
        raise CertificateError(
            f"{where}: the certificate is valid only from "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    if now >= leaf.not_valid_after_utc:
        raise CertificateError(
            f"{where}: the certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: "
            "give a renewed one"
        )
    names = dns_names(leaf)
    missing = [domain for domain in domains if not covers(names, domain)]
    if missing:
        raise CertificateError(
            f"{where}: the certificate does not name {', '.join(missing)} (it names "
            f"{', '.join(names) or 'no DNS name'}): every domain (domain, extra_domains, the "
            "apps' domains) must be on it"
        )
    for position, (certificate, issuer) in enumerate(itertools.pairwise(chain)):
        if not _issued_by(certificate, issuer):
            raise CertificateError(
                f"{where}: certificate {position + 1} ({_name(certificate.subject)}) is not "
                f"issued by the next one ({_name(issuer.subject)}): put the server's "
                "certificate first, then each intermediate in order"
            )
    # Complete: it ends at a CA (an intermediate, whose issuer is a root the clients hold, or
    # a root); a lone server certificate only when a root this machine trusts issued it.
    if len(chain) == 1 and not _issued_by(leaf, leaf) and not _trusted_issuer(leaf):
        raise CertificateError(
            f"{where}: the file holds the server's certificate alone, and its issuer "
            f"{_name(leaf.issuer)} is not a root this machine trusts: append the intermediate "
            "certificates (the CA's fullchain file), or the root if it issued the certificate"
        )
    for certificate in chain[1:]:
        if not _is_ca(certificate):
            raise CertificateError(
                f"{where}: {_name(certificate.subject)} follows the server's certificate but "
                "is no CA: give the server's certificate, then its intermediates"
            )


def dns_names(certificate: x509.Certificate) -> list[str]:
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return extension.value.get_values_for_type(x509.DNSName)


def covers(names: list[str], domain: str) -> bool:
    """Whether a certificate with ``names`` is valid for ``domain`` (a wildcard covers one
    label; a wildcard domain needs the same wildcard)."""
    domain = domain.lower()
    for name in (name.lower() for name in names):
        if name == domain:
            return True
        if name.startswith("*.") and not domain.startswith("*."):
            label, _, rest = domain.partition(".")
            if label and rest == name[2:]:
                return True
    return False


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca


def _trusted_issuer(certificate: x509.Certificate) -> bool:
    """Whether a root this machine trusts (its OpenSSL default) issued ``certificate``."""
    paths = ssl.get_default_verify_paths()
    texts = []
    if paths.cafile and Path(paths.cafile).is_file():
        texts.append(Path(paths.cafile).read_text(errors="replace"))
    if paths.capath and Path(paths.capath).is_dir():
        texts += [
            path.read_text(errors="replace")
            for path in Path(paths.capath).glob("*.pem")
            if path.is_file()
        ]
    for text in texts:
        for block in _blocks(text, "CERTIFICATE"):
            try:
                with warnings.catch_warnings():
                    # Old roots with serial numbers RFC 5280 disallows: not ours to judge.
                    warnings.simplefilter("ignore")
                    root = x509.load_pem_x509_certificate(block.encode())
            except ValueError:
                continue
            if root.subject == certificate.issuer and _issued_by(certificate, root):
                return True
    return False


def _name(name: x509.Name) -> str:
    common = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return f"CN={common[0].value}" if common else name.rfc4514_string() or "(no name)"


# The private CA.
def _permitted(domains) -> list[str]:
    """The CA's name constraints: each domain and what is under it (a wildcard's parent)."""
    return sorted({domain.removeprefix("*.").lower() for domain in domains})


def check_private_ca(stored: dict[str, str], domains) -> None:
    """CertificateError when the private CA exists and may not vouch for every domain."""
    if not stored.get(CA_CERTIFICATE) or stored[CA_CERTIFICATE] == NOT_YET:
        return
    ca = x509.load_pem_x509_certificate(stored[CA_CERTIFICATE].encode())
    allowed = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    permitted = [name.value for name in allowed.permitted_subtrees or []]
    outside = [
        domain
        for domain in domains
        if not any(
            domain.removeprefix("*.") == base or domain.endswith("." + base) for base in permitted
        )
    ]
    if outside:
        raise CertificateError(
            f"the private CA vouches only for names under {', '.join(permitted)} (its name "
            f"constraints), not {', '.join(outside)}: to make a new CA for every domain, remove "
            f"{CA_KEY}, {CA_CERTIFICATE} and {ISSUED} from the secrets file, deploy, and give "
            "the clients the new root (wssfleet private-ca)"
        )


def ensure_private_ca(stored: dict[str, str], domains, now=None) -> bool:
    """Make the private CA if missing, and the masters' certificate if missing, for other
    names, or due; True if anything was made. A domain outside the CA's name constraints
    stops with CertificateError (clients would refuse its certificate)."""
    now = now or datetime.datetime.now(datetime.UTC)
    made = False
    if not stored.get(CA_KEY):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, f"wssfleet private CA for {domains[0]}")]
        )
        permitted = [x509.DNSName(domain) for domain in _permitted(domains)]
        certificate = (
            _builder(name, name, key, now - datetime.timedelta(minutes=5), CA_DAYS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(key_usage(certificate_sign=True), critical=True)
            .add_extension(x509.NameConstraints(permitted, None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        stored[CA_KEY] = key_pem(key)
        stored[CA_CERTIFICATE] = certificate.public_bytes(serialization.Encoding.PEM).decode()
        stored.pop(ISSUED, None)
        made = True
    check_private_ca(stored, domains)
    current = json.loads(stored.get(ISSUED) or "{}")
    if current and sorted(current["names"]) == sorted(domains):
        leaf = x509.load_pem_x509_certificate(current["chain"].encode())
        if leaf.not_valid_after_utc - now > datetime.timedelta(days=RENEW_DAYS):
            if "next_chain" in current:
                return made
            # Made before successors were: one now.
            current |= _issued(stored, domains, _successor_start(leaf), "next_")
            stored[ISSUED] = json.dumps(current)
            return True
        if current.get("next_chain"):
            successor = x509.load_pem_x509_certificate(current["next_chain"].encode())
            left = successor.not_valid_after_utc - now
            if successor.not_valid_before_utc <= now and left > datetime.timedelta(days=RENEW_DAYS):
                # Due: the successor (which the masters' timer may serve already) takes over.
                promoted = {
                    "names": current["names"],
                    "chain": current["next_chain"],
                    "key": current["next_key"],
                    **_issued(stored, domains, _successor_start(successor), "next_"),
                }
                stored[ISSUED] = json.dumps(promoted)
                return True
    start = now - datetime.timedelta(minutes=5)
    fresh = {"names": list(domains), **_issued(stored, domains, start, "")}
    leaf = x509.load_pem_x509_certificate(fresh["chain"].encode())
    fresh |= _issued(stored, domains, _successor_start(leaf), "next_")
    stored[ISSUED] = json.dumps(fresh)
    return True


def _successor_start(leaf: x509.Certificate) -> datetime.datetime:
    """When a certificate's successor becomes valid: RENEW_DAYS before it ends, when the
    masters' timer swaps it in without waiting for a deploy."""
    return leaf.not_valid_after_utc - datetime.timedelta(days=RENEW_DAYS)


def _issued(stored: dict[str, str], domains, start: datetime.datetime, prefix: str) -> dict:
    """A certificate (the leaf alone: the CA is a root, which clients hold and servers do not
    send) and its key for ``domains``, valid LEAF_DAYS from ``start``: {prefix+"chain",
    prefix+"key"}."""
    ca = x509.load_pem_x509_certificate(stored[CA_CERTIFICATE].encode())
    ca_key = serialization.load_pem_private_key(stored[CA_KEY].encode(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])])
    leaf = (
        _builder(subject, ca.subject, key, start, LEAF_DAYS)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(domain) for domain in domains]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(certificate_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return {
        f"{prefix}chain": leaf.public_bytes(serialization.Encoding.PEM).decode(),
        f"{prefix}key": key_pem(key),
    }


def _builder(subject, issuer, key, start, days: int) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def ca_certificate(stored: dict[str, str]) -> str:
    """The private CA's root certificate (PEM), what clients are given to trust."""
    return stored.get(CA_CERTIFICATE) or NOT_YET
