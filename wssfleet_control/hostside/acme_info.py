#!/usr/bin/env python3
"""What the ACME server says, asked from the master: its profiles and its renewal advice (ARI).

    acme_info.py require-profile DIRECTORY PROFILE   exit 1, saying why, unless offered
    acme_info.py window DIRECTORY CERTIFICATE        ARI's suggested window as JSON, or null

The deploy runs ``require-profile`` before asking certbot for a certificate: a CA that knows
nothing of profiles ignores the field and would silently issue its default certificate. The
certificate metrics read ``window`` to show when certbot will renew (RFC 9773: certbot renews at
a random moment inside the window the CA suggests).

Standard library and openssl only: it runs with the host's python3. The CA's HTTPS is checked
against REQUESTS_CA_BUNDLE when set (a private CA, as certbot does), else the system's roots.
"""

from __future__ import annotations

import base64
import calendar
import json
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.request

from layout import ACME_CA_BUNDLE  # beside this file on the host

TIMEOUT = 10


def fetch_json(url: str) -> dict:
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or (
        ACME_CA_BUNDLE if os.path.exists(ACME_CA_BUNDLE) else None
    )
    context = ssl.create_default_context(cafile=bundle)
    request = urllib.request.Request(url, headers={"User-Agent": "wssfleet"})
    with urllib.request.urlopen(request, context=context, timeout=TIMEOUT) as reply:
        return json.loads(reply.read())


def offered_profiles(directory: dict) -> dict[str, str]:
    return dict((directory.get("meta") or {}).get("profiles") or {})


def require_profile(directory_url: str, profile: str) -> int:
    try:
        offered = offered_profiles(fetch_json(directory_url))
    except (OSError, ValueError) as error:
        print(f"cannot read the ACME directory {directory_url}: {error}", file=sys.stderr)
        return 1
    if profile in offered:
        return 0
    what = "offers these: " + ", ".join(sorted(offered)) if offered else "offers no profiles"
    print(
        f"setting acme_profile={profile!r}: the ACME server {directory_url} {what}; "
        "choose one of them, or leave acme_profile empty for the CA's default certificate",
        file=sys.stderr,
    )
    return 1


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def certificate_id(certificate: str) -> str | None:
    """RFC 9773's CertID: the authority key identifier and the serial, base64url, dot-joined."""
    result = subprocess.run(
        [
            "openssl",
            "x509",
            "-noout",
            "-serial",
            "-ext",
            "authorityKeyIdentifier",
            "-in",
            certificate,
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        return None
    serial = re.search(r"serial=([0-9A-Fa-f]+)", result.stdout)
    key_id = re.search(r"(?:keyid:)?((?:[0-9A-Fa-f]{2}:)+[0-9A-Fa-f]{2})", result.stdout)
    if not serial or not key_id:
        return None
    serial_bytes = bytes.fromhex(serial[1].rjust(len(serial[1]) + len(serial[1]) % 2, "0"))
    # DER integers are signed: a serial with its high bit set carries a leading zero byte.
    if serial_bytes[0] & 0x80:
        serial_bytes = b"\0" + serial_bytes
    return _b64url(bytes.fromhex(key_id[1].replace(":", ""))) + "." + _b64url(serial_bytes)


def _timestamp(text: str) -> float:
    """An RFC 3339 time as Unix seconds (fractions and offsets as the CA writes them)."""
    match = re.fullmatch(
        r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text.strip(), re.I
    )
    if not match:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    seconds = calendar.timegm(time.strptime(match[1], "%Y-%m-%dT%H:%M:%S"))
    offset = match[3].upper()
    if offset != "Z":
        sign = 1 if offset[0] == "+" else -1
        seconds -= sign * (int(offset[1:3]) * 3600 + int(offset[4:6]) * 60)
    return seconds + float(match[2] or 0)


def renewal_window(directory_url: str, certificate: str) -> tuple[float, float] | None:
    """(start, end) of the window the CA suggests for renewing, or None: no ARI, no answer."""
    try:
        return _renewal_window(directory_url, certificate)
    except (OSError, ValueError, KeyError) as error:
        print(f"no renewal information from {directory_url}: {error}", file=sys.stderr)
        return None


def _renewal_window(directory_url: str, certificate: str) -> tuple[float, float] | None:
    directory = fetch_json(directory_url)
    base = directory.get("renewalInfo")
    cert_id = certificate_id(certificate)
    if not base or not cert_id:
        return None
    window = fetch_json(base.rstrip("/") + "/" + cert_id)["suggestedWindow"]
    return _timestamp(window["start"]), _timestamp(window["end"])


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "require-profile":
        return require_profile(argv[1], argv[2])
    if len(argv) == 3 and argv[0] == "window":
        window = renewal_window(argv[1], argv[2])
        print(json.dumps(window and {"start": window[0], "end": window[1]}))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
