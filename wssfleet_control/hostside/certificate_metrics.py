#!/usr/bin/env python3
"""Certificate metrics for node_exporter's textfile collector, installed on the master.

The renewal script records every run of ``certbot renew`` (``attempt <exit status>``), the
deploy hook every certificate it installs (``issued``); both rewrite the metrics file from the
certificate on disk and the recorded history. Since Let's Encrypt no longer e-mails about
expiring certificates, these metrics are how a failed renewal gets seen (alert rules in
templates/monitoring/wssfleet-rules.yml.j2).

    certificate_metrics.py attempt STATUS   record a renewal run and its exit status
    certificate_metrics.py issued           record a certificate just installed
    certificate_metrics.py refresh          rewrite the file from what is on disk
    certificate_metrics.py show             print the figures as JSON (make status)

Standard library only: it runs with the host's python3.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

CERT_NAME = "wssfleet"
CERTIFICATE = Path(f"/etc/letsencrypt/live/{CERT_NAME}/cert.pem")
RENEWAL_CONFIG = Path(f"/etc/letsencrypt/renewal/{CERT_NAME}.conf")
STATE = Path("/var/lib/wssfleet/renewal.json")
TEXTFILE = Path("/var/lib/prometheus/node-exporter/wssfleet_certificate.prom")
# certbot renews a certificate this long before it expires unless its renewal config says
# otherwise (renew_before_expiry).
DEFAULT_RENEW_BEFORE = 30 * 86400
UNITS = {
    "day": 86400,
    "days": 86400,
    "week": 604800,
    "weeks": 604800,
    "hour": 3600,
    "hours": 3600,
    "minute": 60,
    "minutes": 60,
    "second": 1,
    "seconds": 1,
}


def certificate_dates() -> tuple[float, float] | None:
    """(not before, not after) of the live certificate, in Unix seconds."""
    result = subprocess.run(
        ["openssl", "x509", "-noout", "-startdate", "-enddate", "-in", str(CERTIFICATE)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        return None
    fields = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)

    def seconds(text: str) -> float:
        return calendar.timegm(time.strptime(text.strip(), "%b %d %H:%M:%S %Y %Z"))

    return seconds(fields["notBefore"]), seconds(fields["notAfter"])


def renew_before() -> int:
    """certbot's renewal window for this certificate, from its renewal config."""
    try:
        text = RENEWAL_CONFIG.read_text()
    except OSError:
        return DEFAULT_RENEW_BEFORE
    match = re.search(r"^\s*renew_before_expiry\s*=\s*(\d+)\s*([a-z]+)", text, re.MULTILINE)
    if match and match[2] in UNITS:
        return int(match[1]) * UNITS[match[2]]
    return DEFAULT_RENEW_BEFORE


def load_state() -> dict[str, float]:
    try:
        return json.loads(STATE.read_text())
    except (OSError, ValueError):
        return {}


def figures(state: dict[str, float]) -> dict[str, float]:
    dates = certificate_dates()
    found: dict[str, float] = dict(state)
    if dates is not None:
        not_before, not_after = dates
        window = renew_before()
        found.update(
            not_before=not_before,
            not_after=not_after,
            renew_before=window,
            # certbot renews at the first run inside the window: from this moment on.
            next_renewal=max(not_after - window, time.time()),
        )
    return found


METRICS = (
    (
        "not_before",
        "wssfleet_certificate_not_before_seconds",
        "gauge",
        "Start of the certificate's validity (Unix seconds)",
    ),
    (
        "not_after",
        "wssfleet_certificate_not_after_seconds",
        "gauge",
        "End of the certificate's validity (Unix seconds)",
    ),
    (
        "next_renewal",
        "wssfleet_certificate_renewal_next_timestamp_seconds",
        "gauge",
        "When the renewal job will next renew it: certbot's renew_before_expiry rule",
    ),
    (
        "last_attempt",
        "wssfleet_certificate_renewal_last_attempt_timestamp_seconds",
        "gauge",
        "When the renewal job last ran",
    ),
    (
        "last_success",
        "wssfleet_certificate_renewal_last_success",
        "gauge",
        "1 if the renewal job's last run succeeded, 0 if it failed",
    ),
    (
        "last_success_time",
        "wssfleet_certificate_renewal_last_success_timestamp_seconds",
        "gauge",
        "When the renewal job last succeeded",
    ),
    (
        "last_issued",
        "wssfleet_certificate_last_issued_timestamp_seconds",
        "gauge",
        "When a new certificate was last installed in HAProxy",
    ),
)


def write_textfile(found: dict[str, float]) -> None:
    lines = []
    for key, name, kind, help_text in METRICS:
        if key in found:
            lines += [
                f"# HELP {name} {help_text}",
                f"# TYPE {name} {kind}",
                f'{name}{{certificate="{CERT_NAME}"}} {found[key]:.0f}',
            ]
    TEXTFILE.parent.mkdir(parents=True, exist_ok=True)
    # node_exporter must never read a half-written file: write beside it, then rename.
    temporary = TEXTFILE.with_suffix(".tmp")
    temporary.write_text("\n".join(lines) + "\n")
    os.chmod(temporary, 0o644)
    temporary.replace(TEXTFILE)


def save_state(state: dict[str, float]) -> None:
    STATE.parent.mkdir(parents=True, exist_ok=True)
    temporary = STATE.with_suffix(".tmp")
    temporary.write_text(json.dumps(state))
    temporary.replace(STATE)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("attempt", "issued", "refresh", "show"):
        print(__doc__, file=sys.stderr)
        return 2
    state = load_state()
    now = time.time()
    if argv[0] == "attempt":
        status = int(argv[1]) if len(argv) > 1 else 1
        state["last_attempt"] = now
        state["last_success"] = 1 if status == 0 else 0
        if status == 0:
            state["last_success_time"] = now
        save_state(state)
    elif argv[0] == "issued":
        state["last_issued"] = now
        save_state(state)
    found = figures(state)
    if argv[0] == "show":
        print(json.dumps(found))
        return 0
    write_textfile(found)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
