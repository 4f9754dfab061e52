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

When certbot will renew (``next_renewal``, the ``renewal_rule`` that says so) follows certbot
5's own decision: the CA's renewal information (ARI, RFC 9773) when it offers it, certbot
renewing at a random moment of the suggested window; a ``renew_before_expiry`` in the renewal
config; otherwise 2/3 of the certificate's lifetime (1/2 below 10 days).

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
from datetime import datetime
from pathlib import Path

import acme_info  # beside this file on the host (wssfleet_control/hostside/)
import layout

CERTIFICATE = Path(layout.LIVE_CERTIFICATE)
RENEWAL_CONFIG = Path(layout.RENEWAL_CONFIG)
STATE = Path(layout.RENEWAL_STATE)
TEXTFILE = Path(layout.CERTIFICATE_METRICS_FILE)
# certbot's lifetime rule (certbot/_internal/renewal.py, _default_renewal_time).
SHORT_LIFETIME = 10 * 86400
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


def renewal_config(key: str) -> str | None:
    """A value of this certificate's certbot renewal config, if set (not commented out)."""
    try:
        text = RENEWAL_CONFIG.read_text()
    except OSError:
        return None
    match = re.search(rf"^\s*{key}\s*=\s*(.+?)\s*$", text, re.MULTILINE)
    return match[1] if match else None


def renew_before() -> int | None:
    """The renewal config's renew_before_expiry in seconds, if it sets one."""
    match = re.fullmatch(r"(\d+)\s*([a-z]+)", renewal_config("renew_before_expiry") or "")
    if match and match[2] in UNITS:
        return int(match[1]) * UNITS[match[2]]
    return None


def ari_deferred() -> bool:
    """Whether certbot skips ARI now: after asking, it waits for the CA's Retry-After (6 hours
    by default), recorded in the renewal config, and meanwhile applies the other rules."""
    retry_after = renewal_config("ari_retry_after")
    try:
        # certbot records it in the host's local time, without a zone, and compares so too.
        return bool(retry_after) and datetime.fromisoformat(retry_after) > datetime.now()
    except ValueError:
        return False


def renewal_plan(not_before: float, not_after: float) -> dict[str, float | str]:
    """When certbot will renew, and which rule says so (certbot's should_autorenew)."""
    candidates: dict[str, float] = {}
    server = renewal_config("server")
    if server and not ari_deferred():
        window = acme_info.renewal_window(server, str(CERTIFICATE))
        if window is not None:
            candidates["ari"] = window[0]
    configured = renew_before()
    if configured is not None:
        candidates["renew_before_expiry"] = not_after - configured
    if not candidates:
        candidates["lifetime"] = lifetime_renewal(not_before, not_after)
    rule = min(candidates, key=candidates.__getitem__)
    return {"next_renewal": candidates[rule], "renewal_rule": rule}


def lifetime_renewal(not_before: float, not_after: float) -> float:
    """certbot's lifetime rule: at 2/3 of the lifetime, 1/2 below 10 days."""
    lifetime = not_after - not_before
    return not_before + lifetime * (1 / 2 if lifetime < SHORT_LIFETIME else 2 / 3)


def load_state() -> dict[str, float]:
    try:
        return json.loads(STATE.read_text())
    except (OSError, ValueError):
        return {}


def figures(state: dict[str, float]) -> dict[str, float | str]:
    dates = certificate_dates()
    found: dict[str, float | str] = dict(state)
    if dates is not None:
        not_before, not_after = dates
        found.update(not_before=not_before, not_after=not_after)
        found.update(renewal_plan(not_before, not_after))
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
        "When certbot plans to renew it: the CA's renewal information (ARI) or the lifetime rule",
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


def write_textfile(found: dict[str, float | str]) -> None:
    lines = []
    for key, name, kind, help_text in METRICS:
        if key in found:
            labels = f'certificate="{layout.CERT_NAME}"'
            if key == "next_renewal":
                labels += f',rule="{found["renewal_rule"]}"'
            lines += [
                f"# HELP {name} {help_text}",
                f"# TYPE {name} {kind}",
                f"{name}{{{labels}}} {found[key]:.0f}",
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
