#!/usr/bin/python3
"""A renewed certificate reaches every master: run by a timer on each master of several,
it asks the other masters which certificate they serve (a TLS handshake on their private
address), and installs one that is newer than its own when it is the same key's (certbot
keeps the key across renewals: --reuse-key) and chains to a trusted root for the domain.
The certificate is public; only the key, which every master already holds, is secret, so
nothing secret crosses the network here.

    certificate_sync.py DOMAIN PEER_ADDRESS...
    certificate_sync.py --install STAGED_PEM SOURCE DOMAIN...

The second form is the deploy's (wssfleet_control/certificate_sharing.py): it installs a
certificate and key another master serves, after the same checks, and removes the file.

Installed by roles/certificates.py beside the host contract; standard library and the
openssl command only (it runs on Debian's python3).
"""

from __future__ import annotations

import calendar
import os
import re
import shutil
import subprocess
import sys
import syslog
import tempfile
import time

import haproxy_runtime  # beside this file on the host
from layout import ACME_ROOTS, HAPROXY_CERTIFICATE, PROVIDED_CERTIFICATE

PEM_BLOCK = re.compile(
    r"-----BEGIN (CERTIFICATE|[A-Z ]*PRIVATE KEY)-----.+?-----END \1-----", re.DOTALL
)
SYSTEM_ROOTS = "/etc/ssl/certs/ca-certificates.crt"


def openssl(*arguments: str, text: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *arguments], input=text, capture_output=True, text=True, timeout=20
    )


def blocks(pem: str) -> list[str]:
    return [match.group(0) for match in PEM_BLOCK.finditer(pem)]


def served_by(peer: str, domain: str) -> list[str]:
    """The chain a peer's HAProxy (address, or address:port) serves for ``domain``, leaf
    first (empty if none)."""
    target = peer if ":" in peer else f"{peer}:443"
    try:
        result = openssl("s_client", "-connect", target, "-servername", domain, "-showcerts")
    except subprocess.TimeoutExpired:
        return []  # a host that drops packets: as down as one that refuses
    return [block for block in blocks(result.stdout) if "CERTIFICATE" in block]


def certificate_date(certificate: str, which: str) -> float:
    """The certificate's ``-startdate`` or ``-enddate``, in seconds since the epoch."""
    dates = openssl("x509", "-noout", which, text=certificate).stdout.strip()
    return calendar.timegm(time.strptime(dates.partition("=")[2], "%b %d %H:%M:%S %Y %Z"))


def issued_at(certificate: str) -> float:
    """When the certificate was issued (notBefore): the newer certificate is the one issued
    later, even when it ends sooner (a move to a shorter-lived profile)."""
    return certificate_date(certificate, "-startdate")


def public_key(pem: str, private: bool = False) -> str:
    if private:
        return openssl("pkey", "-pubout", text=pem).stdout
    return openssl("x509", "-noout", "-pubkey", text=pem).stdout


def trusted(chain: list[str], domain: str) -> bool:
    """The leaf chains, through the intermediates served with it, to a root this host
    trusts (ACME_ROOTS when the deployment names its CA's roots, else the system's), and
    is for ``domain``."""
    roots = ACME_ROOTS if os.path.exists(ACME_ROOTS) else SYSTEM_ROOTS
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as intermediates:
        intermediates.write("".join(block + "\n" for block in chain[1:]))
        intermediates.flush()
        # openssl refuses an -untrusted file without a certificate in it.
        untrusted = ["-untrusted", intermediates.name] if chain[1:] else []
        result = openssl(
            "verify", "-CAfile", roots, *untrusted, "-verify_hostname", domain, text=chain[0]
        )
    return result.returncode == 0


def self_signed(certificate: str) -> bool:
    """A master's placeholder until it gets the CA's certificate (roles/certificates.py)."""
    names = openssl("x509", "-noout", "-subject", "-issuer", text=certificate).stdout
    subject, _, issuer = names.partition("\n")
    return subject.partition("=")[2].strip() == issuer.partition("=")[2].strip()


def refusal(pem: str, domains: list[str]) -> str:
    """Why the certificate and key in ``pem`` may not replace what HAProxy serves here, or ''
    when it may: the key is its certificate's, the chain reaches a trusted root for every
    domain, and, unless this master still serves its placeholder or a provided certificate
    (layout.PROVIDED_CERTIFICATE), the key is the one it holds and the certificate was issued
    later than its own."""
    found = blocks(pem)
    key = next((block for block in found if "PRIVATE KEY" in block), None)
    chain = [block for block in found if "CERTIFICATE" in block]
    if key is None or not chain:
        return "no certificate and key"
    offered = public_key(key, private=True)
    if not offered or offered != public_key(chain[0]):
        return "its key is not its certificate's"
    for domain in domains:
        if not trusted(chain, domain):
            return f"it does not chain to a trusted root for {domain}"
    with open(HAPROXY_CERTIFICATE) as handle:
        own = blocks(handle.read())
    own_key = next((block for block in own if "PRIVATE KEY" in block), None)
    own_chain = [block for block in own if "CERTIFICATE" in block]
    # Its placeholder, or a certificate the deploy provided before certificate_source became
    # acme_http again: the ACME one comes with its own key.
    if own_key is None or not own_chain or self_signed(own_chain[0]):
        return ""
    if os.path.isdir(PROVIDED_CERTIFICATE):
        return ""
    if public_key(own_key, private=True) != offered:
        return "another key than the one this master holds"
    if issued_at(chain[0]) <= issued_at(own_chain[0]):
        return "not issued later than the certificate served here"
    return ""


def install_checked(staged: str, source: str, domains: list[str]) -> int:
    """The deploy's copy of another master's certificate: installed when it passes the
    checks, refused aloud (exit 1) when not; the staged file is removed either way."""
    try:
        with open(staged) as handle:
            pem = handle.read()
    finally:
        os.unlink(staged)
    why = refusal(pem, domains)
    if why:
        print(f"not installed: {why}", file=sys.stderr)
        return 1
    installed = haproxy_runtime.install_pem(pem, source)
    if installed == 0:
        shutil.rmtree(PROVIDED_CERTIFICATE, ignore_errors=True)
    return installed


def sync(domain: str, peers: list[str]) -> int:
    """Install the newest trusted certificate a peer serves for this master's key; 0 when
    this master serves the newest one now."""
    with open(HAPROXY_CERTIFICATE) as handle:
        own = handle.read()
    own_blocks = blocks(own)
    key = next((block for block in own_blocks if "PRIVATE KEY" in block), None)
    own_chain = [block for block in own_blocks if "CERTIFICATE" in block]
    if key is None or not own_chain:
        print(f"{HAPROXY_CERTIFICATE} holds no certificate and key", file=sys.stderr)
        return 1
    ours = public_key(key, private=True)
    newest, newest_start, source = own_chain, issued_at(own_chain[0]), ""
    for peer in peers:
        chain = served_by(peer, domain)
        if not chain or public_key(chain[0]) != ours:
            continue  # down, or another key (it gets this one at the next deploy)
        starts = issued_at(chain[0])
        if starts > newest_start and trusted(chain, domain):
            newest, newest_start, source = chain, starts, peer
    if not source:
        return 0
    pem = "".join(block + "\n" for block in newest) + key + "\n"
    syslog.syslog(f"wssfleet: a newer certificate from master {source}, from {newest_start:.0f}")
    return haproxy_runtime.install_pem(pem, f"master {source}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--install"] and len(sys.argv) >= 5:
        sys.exit(install_checked(sys.argv[2], sys.argv[3], sys.argv[4:]))
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(sync(sys.argv[1], sys.argv[2:]))
