"""Every certificate source on the two-master lab, switched on a live fleet: the operator's
own files, the deployment's private CA, DNS-01 (a wildcard) through RFC 2136 updates to Knot
and through the Cloudflare and Route 53 APIs (the lab's stand-in, writing to Knot), and back
to ACME over HTTP-01 (Pebble). Each switch is a deploy while 400 clients and their
publishers run through the front door: each master serves the new certificate to a client
that trusts only its root, and no WebSocket notices.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.e2e.crowd import through
from tests.lab_fleet import deploy, derived_inventory, wssfleet
from tests.own_ca import OwnCA
from wssfleet_control.hostside.layout import (
    PROVIDED_CERTIFICATE,
    PROVIDED_RENEWAL_CRON,
    PROVIDED_RENEWAL_HELPER,
)

pytestmark = pytest.mark.timeout(600)

CRON_FILE = "/etc/cron.d/wssfleet-certbot"


def served_by(lab, master: str, roots: str, name: str | None = None) -> x509.Certificate:
    """What ``master``'s own address serves for ``name`` (the domain), to a client trusting
    ``roots`` (PEM) alone; the handshake fails unless it chains to them for that name."""
    context = ssl.create_default_context(cadata=roots)
    address = lab.fleet.node(master).address
    with (
        socket.create_connection((address, 443), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=name or lab.domain) as connection,
    ):
        return x509.load_der_x509_certificate(connection.getpeercert(binary_form=True))


def fingerprint(certificate: x509.Certificate) -> bytes:
    return certificate.fingerprint(hashes.SHA256())


def switches_under_crowd(lab, source: str, steps) -> dict:
    """``steps`` (switches, renewals) under the front door's crowd (from ``source``), the
    lab's own inventory deployed again after; what the clients saw, asserted unharmed."""
    try:
        summary = through(lab, source, steps, after=5)
    finally:
        code, _, log = deploy()
        assert code == 0, log[-3000:]
    assert summary["reconnections"] == 0, summary
    assert summary["failed handshakes"] == 0, summary
    return summary


def dns01_names(lab) -> list[str]:
    """Names only the wildcard covers, and the domain."""
    return [f"a.{lab.domain}", f"b.{lab.domain}", lab.domain]


def test_files_then_the_private_ca_renewed_then_acme_reach_both_masters_with_none_dropped(
    lab, tmp_path, source_address
):
    masters = [master.name for master in lab.fleet.masters]
    if len(masters) < 2:
        pytest.fail("the lab has one master: run 'make lab-down' and 'make deploy' (LAB_MASTERS=2)")
    own = OwnCA()
    chain, key = own.issue(lab.fleet.settings.domains)
    (tmp_path / "site.pem").write_text(chain)
    (tmp_path / "site.key").write_text(key)
    files = derived_inventory(
        tmp_path / "files",
        certificate_source="files",
        certificate_file=str(tmp_path / "site.pem"),
        certificate_key_file=str(tmp_path / "site.key"),
    )
    private = derived_inventory(tmp_path / "private", certificate_source="private_ca")
    with open(lab.root_bundle) as bundle:
        acme_roots = bundle.read()
    # The clients trust every root the fleet will serve from: an operator hands out the new
    # root before switching to it.
    lab._client_tls.load_verify_locations(cadata=own.root_pem)
    seen: dict[str, dict[str, x509.Certificate]] = {}

    def switch() -> dict:
        code, _, log = deploy(files)
        assert code == 0, log[-3000:]
        seen["files"] = {master: served_by(lab, master, own.root_pem) for master in masters}
        for master in masters:
            # The key is root's alone, and no ACME renewal would replace the certificate.
            mode = lab.on(master, f"stat -c '%a %U' {PROVIDED_CERTIFICATE}/privkey.pem").stdout
            assert mode.strip() == "600 root", (master, mode)
            assert lab.on(master, f"test -e {CRON_FILE}").returncode == 1, master
            # Your files come with no successor: nothing to swap in.
            assert lab.on(master, f"test -e {PROVIDED_RENEWAL_CRON}").returncode == 1, master
        code, _, log = deploy(private)
        assert code == 0, log[-3000:]
        root = wssfleet("private-ca", "-i", str(private))
        assert root.returncode == 0, root.stderr
        seen["private_ca"] = {master: served_by(lab, master, root.stdout) for master in masters}
        for master in masters:
            # Its successor waits beside it for the masters' cron: valid only in 60 days.
            renewal = lab.on(master, f"python3 {PROVIDED_RENEWAL_HELPER}")
            assert renewal.returncode == 0, renewal.stdout + renewal.stderr
            assert "not valid yet" in renewal.stdout, renewal.stdout
            assert lab.on(master, f"test -s {PROVIDED_RENEWAL_CRON}").returncode == 0, master
        renewal = wssfleet("renew", "-i", str(private))
        assert renewal.returncode == 0, renewal.stdout + renewal.stderr
        seen["private_ca renewed"] = {
            master: served_by(lab, master, root.stdout) for master in masters
        }
        code, report, log = deploy()
        assert code == 0, log[-3000:]
        seen["acme_http"] = {master: served_by(lab, master, acme_roots) for master in masters}
        return report.get("certificates", {})

    # Hot swaps: no WebSocket notices three certificates and two keys changing under it.
    summary = switches_under_crowd(lab, source_address(43), switch)
    leaf = x509.load_pem_x509_certificates(chain.encode())[0]
    for master in masters:
        assert fingerprint(seen["files"][master]) == fingerprint(leaf), master
    private_leaves = {fingerprint(seen["private_ca"][master]) for master in masters}
    assert len(private_leaves) == 1
    # `make renew` issued another from the same CA (the same root verified it) to both.
    renewed = {fingerprint(seen["private_ca renewed"][master]) for master in masters}
    assert len(renewed) == 1 and renewed != private_leaves
    # Back on ACME: a new certificate, the same on both masters (the second got it, and its
    # key, from the deploy), and neither keeps the provided one nor lacks the renewal job.
    acme_leaves = {fingerprint(seen["acme_http"][master]) for master in masters}
    assert len(acme_leaves) == 1
    assert summary["outcome"][masters[1]].startswith("copied from"), summary["outcome"]
    for master in masters:
        left = lab.on(master, f"test -e {PROVIDED_CERTIFICATE} || echo gone").stdout.strip()
        assert left == "gone", f"{master} still keeps {PROVIDED_CERTIFICATE}"
    for master in masters:
        assert lab.on(master, f"test -e {PROVIDED_RENEWAL_CRON}").returncode == 1, master
    cron = lab.on(masters[0], f"cat {CRON_FILE}")
    assert cron.returncode == 0 and "wssfleet-renew" in cron.stdout, cron.stdout + cron.stderr


def test_a_wildcard_over_dns01_serves_any_name_under_the_domain_and_renews_on_both_masters(
    lab, tmp_path, source_address, monkeypatch
):
    masters = [master.name for master in lab.fleet.masters]
    dns01 = lab.described["acme_dns01"]
    # The TSIG key from the environment, as a CI runner gives it.
    monkeypatch.setenv("WSSFLEET_SECRET_ACME_DNS_TSIG_SECRET", dns01["tsig_secret"])
    inventory = derived_inventory(
        tmp_path,
        certificate_source="acme_dns",
        acme_server=dns01["directory"],
        extra_domains=[f"*.{lab.domain}"],
        acme_dns_server=dns01["server"],
        acme_dns_port=dns01["port"],
        acme_dns_tsig_key=dns01["tsig_name"],
        acme_dns_tsig_algorithm=dns01["tsig_algorithm"],
        acme_dns_propagation_seconds=0,
    )
    with open(dns01["root_bundle"]) as bundle:
        root = bundle.read()
    names = dns01_names(lab)
    seen: dict[str, dict] = {}

    def switch_then_renew() -> dict:
        code, _, log = deploy(inventory)
        assert code == 0, log[-3000:]
        seen["issued"] = {
            (master, name): served_by(lab, master, root, name)
            for master in masters
            for name in names
        }
        renewal = wssfleet("renew", "-i", str(inventory))
        assert renewal.returncode == 0, renewal.stdout + renewal.stderr
        seen["renewed"] = {master: served_by(lab, master, root, names[0]) for master in masters}
        return {}

    switches_under_crowd(lab, source_address(44), switch_then_renew)
    issued = {fingerprint(certificate) for certificate in seen["issued"].values()}
    assert len(issued) == 1, "the masters or the names got different certificates"
    renewed = {fingerprint(certificate) for certificate in seen["renewed"].values()}
    assert len(renewed) == 1 and renewed != issued, "the renewal did not reach both masters"


def test_dns01_through_the_cloudflare_then_the_route53_api_reaches_both_masters(
    lab, tmp_path, source_address, monkeypatch
):
    """Through the lab's stand-in for both APIs (lab/dns_api.py), which checks the token and
    the AWS signature as the providers do and writes the records into Knot's zone."""
    masters = [master.name for master in lab.fleet.masters]
    dns01 = lab.described["acme_dns01"]
    api = dns01["api"]
    monkeypatch.setenv("WSSFLEET_SECRET_ACME_DNS_CLOUDFLARE_API_TOKEN", api["cloudflare_api_token"])
    monkeypatch.setenv(
        "WSSFLEET_SECRET_ACME_DNS_ROUTE53_SECRET_ACCESS_KEY", api["route53_secret_access_key"]
    )
    through_provider = {
        "certificate_source": "acme_dns",
        "acme_server": dns01["directory"],
        "extra_domains": [f"*.{lab.domain}"],
        "acme_dns_propagation_seconds": 0,
    }
    cloudflare = derived_inventory(
        tmp_path / "cloudflare",
        **through_provider,
        acme_dns_provider="cloudflare",
        acme_dns_api_url=api["cloudflare_api_url"],
    )
    route53 = derived_inventory(
        tmp_path / "route53",
        **through_provider,
        acme_dns_provider="route53",
        acme_dns_route53_access_key_id=api["route53_access_key_id"],
        acme_dns_api_url=api["route53_api_url"],
    )
    with open(dns01["root_bundle"]) as bundle:
        root = bundle.read()
    journal = Path(api["journal"])
    # The calls of this test alone (the journal lives as long as the lab).
    earlier_calls = len(journal.read_text().splitlines()) if journal.exists() else 0
    names = dns01_names(lab)
    seen: dict[str, set] = {}

    def served(name: str) -> set[bytes]:
        return {fingerprint(served_by(lab, master, root, name)) for master in masters}

    def switch_then_renew() -> dict:
        for provider, provider_inventory in (("cloudflare", cloudflare), ("route53", route53)):
            started = time.monotonic()
            code, _, log = deploy(provider_inventory)
            assert code == 0, log[-3000:]
            print(f"switched to {provider} in {time.monotonic() - started:.1f} s")
            seen[provider] = set.union(*(served(name) for name in names))
            seen[f"{provider} files"] = {
                lab.on(master, "stat -c '%n %U %a' /etc/wssfleet/acme-dns-*.ini").stdout
                for master in masters
            }
        # Renewed through Route 53 by the renewal script, as cron runs it.
        renewal = wssfleet("renew", "-i", str(route53))
        assert renewal.returncode == 0, renewal.stdout + renewal.stderr
        seen["renewed"] = served(names[0])
        return {}

    switches_under_crowd(lab, source_address(44), switch_then_renew)
    # Each provider's certificate, and the renewal's, served by both masters for every name.
    issued = [seen["cloudflare"], seen["route53"], seen["renewed"]]
    assert all(len(fingerprints) == 1 for fingerprints in issued), issued
    assert len(set.union(*issued)) == 3, "a switch or the renewal served no new certificate"
    # Only the provider in use has credentials on a master, root's alone.
    for provider in ("cloudflare", "route53"):
        assert seen[f"{provider} files"] == {f"/etc/wssfleet/acme-dns-{provider}.ini root 600\n"}, (
            seen
        )
    calls = [json.loads(line) for line in journal.read_text().splitlines()[earlier_calls:]]
    made = [(call["api"], call["call"]) for call in calls]
    # Every name proved anew through each API (the DNS-01 CA reuses no authorization): a
    # record each through Cloudflare, removed after; through Route 53, a record set per
    # challenge name (the domain and its wildcard share one), deleted after, twice.
    certified = {*lab.fleet.settings.domains, f"*.{lab.domain}"}
    challenged = {name.removeprefix("*.") for name in certified}
    assert made.count(("cloudflare", "create")) == len(certified), made
    assert made.count(("cloudflare", "delete")) == len(certified), made
    assert made.count(("route53", "delete")) == 2 * len(challenged), made
    assert not [call for call in calls if call["call"] == "refused"], calls
