#!/usr/bin/python3
"""The private CA's renewal between deploys (certificate_source private_ca), run by cron on
every master: the deploy leaves the next certificate beside the current one, valid from 30
days before the current one ends (wssfleet_control/site_certificate.py). Once it is valid and
HAProxy serves another, this swaps it in through the runtime API (no reload). The CA's key
never leaves the control machine; the next deploy makes the successor the current one and
brings a new successor.

    provided_renewal.py [DIRECTORY]     (default: layout.PROVIDED_CERTIFICATE/next)

Exit 0 when HAProxy serves a certificate that is not due for its successor (or it swapped
it in), 1 when the swap failed. Standard library and the openssl command only.
"""

from __future__ import annotations

import calendar
import os
import subprocess
import sys
import time

import haproxy_runtime  # beside this file on the host
from layout import HAPROXY_CERTIFICATE, PROVIDED_CERTIFICATE


def openssl_x509(path: str, *options: str) -> str:
    result = subprocess.run(
        ["openssl", "x509", "-noout", *options, "-in", path],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def starts(path: str) -> float | None:
    """When the certificate in ``path`` becomes valid (Unix seconds); None if unreadable."""
    line = openssl_x509(path, "-startdate")
    if not line:
        return None
    return calendar.timegm(time.strptime(line.partition("=")[2], "%b %d %H:%M:%S %Y %Z"))


def fingerprint(path: str) -> str:
    return openssl_x509(path, "-fingerprint", "-sha256").partition("=")[2]


def renew(directory: str, now: float | None = None) -> int:
    chain = os.path.join(directory, "fullchain.pem")
    if not os.path.isfile(chain):
        print(f"no next certificate in {directory}: nothing to do")
        return 0
    begins = starts(chain)
    now = time.time() if now is None else now
    if begins is None or now < begins:
        print("the next certificate is not valid yet: HAProxy keeps the current one")
        return 0
    if fingerprint(chain) == fingerprint(HAPROXY_CERTIFICATE):
        print("HAProxy serves the next certificate already")
        return 0
    return haproxy_runtime.install_cert(directory)


if __name__ == "__main__":
    sys.exit(renew(sys.argv[1] if len(sys.argv) > 1 else f"{PROVIDED_CERTIFICATE}/next"))
