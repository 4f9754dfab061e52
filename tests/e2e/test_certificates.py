"""Certificates of today and tomorrow: short-lived ones renewed on schedule by cron, ACME
profiles, and hosts of a release wssfleet does not support.

The lab runs two Pebbles (lab/settings.py): the standard CA, whose one profile is `classic`
(90 days), and one that also offers `shortlived` (4 minutes). Each test leaves the fleet on
the standard CA, as the lab inventory describes it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
from dataclasses import dataclass

import pytest
from cryptography import x509

from tests.e2e.conftest import run
from tests.frames import next_frame
from tests.lab_fleet import changed, deploy, derived_inventory
from wssfleet_control.hostside.layout import CERTIFICATE_METRICS_HELPER

pytestmark = pytest.mark.timeout(900)

POLL_SECONDS = 5
RENEWALS_WATCHED = 1
NOT_DUE = "Certificate not yet due for renewal"
PROCESSING = "Processing /etc/letsencrypt/renewal/"


@dataclass
class Served:
    """A certificate HAProxy served, and when the test first and last saw it."""

    serial: int
    not_before: float
    not_after: float
    first_seen: float
    last_seen: float


def served_certificate(lab) -> x509.Certificate:
    context = lab.tls_context()
    with (
        socket.create_connection((lab.master_address, 443), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=lab.domain) as connection,
    ):
        return x509.load_der_x509_certificate(connection.getpeercert(binary_form=True))


async def echoes(ws, text: str) -> bool:
    await ws.send(json.dumps({"type": "echo", "data": text}))
    return (await next_frame(ws, 10))["data"] == text


def test_short_lived_certificates_renew_on_schedule_through_cron_keeping_a_websocket(lab, tmp_path):
    short_lived = lab.described["acme_short_lived"]
    lifetime = short_lived["lifetime_seconds"]
    # cron every minute, as a fleet on 6-day certificates would run every few hours.
    inventory = derived_inventory(
        tmp_path,
        acme_server=short_lived["directory"],
        acme_profile=short_lived["profile"],
        renewal_interval="1m",
        renewal_random_delay="5s",
    )
    deployed_at = int(time.time())
    code, _, log = deploy(inventory)
    assert code == 0, log[-3000:]

    def renewal_journal() -> str:
        return lab.on(
            "master",
            f"journalctl -t wssfleet-renew --no-pager -o cat --since @{deployed_at}",
        ).stdout

    try:

        async def scenario() -> tuple[list[Served], int]:
            ws = await lab.connect()
            await next_frame(ws, 10)
            seen: list[Served] = []
            echoed = 0
            declined = False
            deadline = time.time() + lifetime * (RENEWALS_WATCHED + 1)
            while (len(seen) <= RENEWALS_WATCHED or not declined) and time.time() < deadline:
                certificate = await asyncio.to_thread(served_certificate, lab)
                now = time.time()
                if not seen or seen[-1].serial != certificate.serial_number:
                    seen.append(
                        Served(
                            certificate.serial_number,
                            certificate.not_valid_before_utc.timestamp(),
                            certificate.not_valid_after_utc.timestamp(),
                            now,
                            now,
                        )
                    )
                seen[-1].last_seen = now
                if len(seen) > RENEWALS_WATCHED and not declined:
                    declined = NOT_DUE in await asyncio.to_thread(renewal_journal)
                # The WebSocket opened before the first swap answers after every poll.
                assert await echoes(ws, f"poll {echoed}"), f"no echo after {len(seen)} certificates"
                echoed += 1
                await asyncio.sleep(POLL_SECONDS)
            await ws.close()
            return seen, echoed

        seen, echoed = run(scenario(), timeout=lifetime * (RENEWALS_WATCHED + 2))
        assert len(seen) == RENEWALS_WATCHED + 1, f"saw {len(seen)} certificates: {seen}"
        for served in seen:
            assert abs(served.not_after - served.not_before - lifetime) <= 60, served
        for old, new in itertools.pairwise(seen):
            # Replaced while still valid: no client ever met an expired certificate.
            assert new.first_seen <= old.not_after, (old, new)
            assert old.last_seen <= old.not_after, old
        journal = renewal_journal()
        assert "Congratulations, all renewals succeeded" in journal, journal[-3000:]
        # Not at every run: some cron run declined.
        assert NOT_DUE in journal, journal[-3000:]
        # On schedule. certbot asks the CA's renewal information (ARI) at its first run and
        # renews at a random moment of the suggested window; Pebble's spans a day either side
        # of 2/3 of the lifetime, so for a 4-minute certificate that first run renews or not
        # with even odds. certbot then defers ARI for the CA's Retry-After (Pebble: 6 hours)
        # and renews by the lifetime rule: half of it, below 10 days.
        runs_before_renewal = journal.partition("Renewing an existing certificate")[0]
        if runs_before_renewal.count(PROCESSING) > 1:
            assert seen[1].not_before - seen[0].not_before >= lifetime / 2 - 2, seen
        record = json.loads(lab.on("master", f"python3 {CERTIFICATE_METRICS_HELPER} show").stdout)
        # What status and the metrics say comes next is that rule, for the certificate served.
        assert record["renewal_rule"] == "lifetime", record
        assert (
            record["next_renewal"]
            == seen[-1].not_before + (seen[-1].not_after - seen[-1].not_before) / 2
        ), record
        assert record["last_success"] == 1, record
        assert record["not_after"] == seen[-1].not_after, record
        assert time.time() - 120 <= record["last_attempt"], record
        assert echoed >= (seen[-1].first_seen - seen[0].first_seen) / (POLL_SECONDS + 10)
    finally:
        code, _, log = deploy()
        assert code == 0, log[-3000:]
    # Back on the standard CA: a 90-day certificate again.
    certificate = served_certificate(lab)
    validity = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert validity.days >= 89


def test_a_profile_the_ca_does_not_offer_stops_the_deploy_and_keeps_the_certificate(lab, tmp_path):
    serial_before = served_certificate(lab).serial_number
    code, report, log = deploy(derived_inventory(tmp_path, acme_profile="shortlived"))
    assert code != 0
    # The lab's CA offers `classic` only; Pebble would give an order naming another profile
    # an error, but a CA that knows no profiles would silently issue its default.
    assert any(
        "acme_profile='shortlived'" in error and "offers these: classic;" in error
        for error in report["errors"]
    ), report["errors"] or log[-3000:]
    assert served_certificate(lab).serial_number == serial_before
    code, report, log = deploy()
    assert code == 0, log[-3000:]
    assert [name for name, _ in changed(report) if "certificate" in name.lower()] == []


def test_a_host_of_an_unsupported_release_stops_the_deploy_before_any_change(lab):
    worker = lab.fleet.workers[-1].name
    # /etc/os-release is a link to /usr/lib/os-release: a file of Debian 11 replaces it.
    pretend = (
        "sed -e 's/^VERSION_ID=.*/VERSION_ID=\"11\"/' "
        "-e 's/^VERSION=.*/VERSION=\"11 (bullseye)\"/' /usr/lib/os-release > /etc/os-release.new "
        "&& mv -f /etc/os-release.new /etc/os-release"
    )
    result = lab.on(worker, pretend)
    assert result.returncode == 0, result.stderr
    try:
        code, report, log = deploy()
        assert code != 0
        assert any(
            f"host {worker} runs Debian 11" in error and "Debian 13 (trixie)" in error
            for error in report["errors"]
        ), report["errors"] or log[-3000:]
        # Stopped while deciding what to do: no operation ran on any host.
        assert "operations" not in report, report
    finally:
        lab.on(worker, "ln -sf ../usr/lib/os-release /etc/os-release")
    code, report, _ = deploy()
    assert code == 0 and changed(report) == []
