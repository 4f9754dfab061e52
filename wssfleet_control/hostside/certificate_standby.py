#!/usr/bin/python3
"""Renewal with the first master down. The first master renews with certbot; every other
master's renewal script (cron, make renew) asks this helper whether to renew itself. It
does only while every master before it in the inventory is unreachable (no TLS handshake on
its private address), and only when the certificate it serves is due or the run is forced.
So the earliest master that answers renews: the first one, or the next while it is down.

A standby renews the certificate it serves, for the key every master shares, through a
certificate request (certbot certonly --csr): no certbot lineage lives on it, and the first
master's lineage stays the only one. The other masters' sync timers take the result.

    certificate_standby.py due DOMAIN [--force] EARLIER_MASTER_ADDRESS...
        exit 0: renew here now; exit 3: not here, or not due (why, on stdout); exit 4:
        forced, but an earlier master answers (why, on stderr)

Standard library and the openssl command only (it runs on Debian's python3).
"""

from __future__ import annotations

import sys
import time

from certificate_metrics import lifetime_renewal  # beside this file on the host
from certificate_sync import blocks, certificate_date, issued_at, openssl, served_by
from layout import HAPROXY_CERTIFICATE

NOT_HERE = 3
DECLINED = 4


def due(certificate: str, now: float) -> bool:
    """Due as certbot judges a certificate whose CA gives no renewal window."""
    ends = certificate_date(certificate, "-enddate")
    return now >= lifetime_renewal(issued_at(certificate), ends)


def self_signed(certificate: str) -> bool:
    subject = openssl("x509", "-noout", "-subject", "-nameopt", "compat", text=certificate)
    issuer = openssl("x509", "-noout", "-issuer", "-nameopt", "compat", text=certificate)
    return subject.stdout.partition("=")[2] == issuer.stdout.partition("=")[2]


def decide(force: bool, earlier: list[str], domain: str, now: float) -> tuple[bool, str]:
    """Whether this master renews now, and why (or why not)."""
    for address in earlier:
        if served_by(address, domain):
            return False, f"master {address} answers on :443: it renews, not this one"
    with open(HAPROXY_CERTIFICATE) as handle:
        chain = [block for block in blocks(handle.read()) if "CERTIFICATE" in block]
    if not chain or self_signed(chain[0]):
        return False, "no CA-issued certificate here yet: the first master's deploy obtains it"
    if force:
        return True, "every earlier master is unreachable: renewing here (forced)"
    if not due(chain[0], now):
        return False, "every earlier master is unreachable; the certificate is not due yet"
    return True, "every earlier master is unreachable and the certificate is due: renewing here"


def main(arguments: list[str]) -> int:
    match arguments:
        case ["due", domain, *rest]:
            earlier = [argument for argument in rest if argument != "--force"]
            force = "--force" in rest
            renew, why = decide(force, earlier, domain, time.time())
            print(why, file=sys.stderr if force and not renew else sys.stdout)
            if renew:
                return 0
            # Forced (make renew) on a master that should not renew: a failure, said aloud.
            return DECLINED if force else NOT_HERE
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
