"""Every certificate source on the two-master lab, switched on a live fleet: the operator's
own files, the deployment's private CA, and back to ACME (Pebble). Each switch is a deploy
while 400 clients and their publishers run through the front door: each master serves the new
certificate to a client that trusts only its root, and no WebSocket notices.
"""

from __future__ import annotations

import socket
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.e2e.crowd import through
from tests.lab_fleet import deploy, derived_inventory, wssfleet
from tests.own_ca import OwnCA
from wssfleet_control.hostside.layout import PROVIDED_CERTIFICATE

pytestmark = pytest.mark.timeout(600)

CRON_FILE = "/etc/cron.d/wssfleet-certbot"


def served_by(lab, master: str, roots: str) -> x509.Certificate:
    """What ``master``'s own address serves for the domain, to a client trusting ``roots``
    (PEM) alone; the handshake fails unless it chains to them for the domain."""
    context = ssl.create_default_context(cadata=roots)
    address = lab.fleet.node(master).address
    with (
        socket.create_connection((address, 443), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=lab.domain) as connection,
    ):
        return x509.load_der_x509_certificate(connection.getpeercert(binary_form=True))


def fingerprint(certificate: x509.Certificate) -> bytes:
    return certificate.fingerprint(hashes.SHA256())


def test_files_then_the_private_ca_then_acme_reach_both_masters_with_no_websocket_dropped(
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
        code, _, log = deploy(private)
        assert code == 0, log[-3000:]
        root = wssfleet("private-ca", "-i", str(private))
        assert root.returncode == 0, root.stderr
        seen["private_ca"] = {master: served_by(lab, master, root.stdout) for master in masters}
        code, report, log = deploy()
        assert code == 0, log[-3000:]
        seen["acme_http"] = {master: served_by(lab, master, acme_roots) for master in masters}
        return report.get("certificates", {})

    try:
        summary = through(lab, source_address(43), switch, after=5)
    finally:
        code, _, log = deploy()
        assert code == 0, log[-3000:]
    # Hot swaps: no WebSocket noticed three certificates and two keys changing under it.
    assert summary["reconnections"] == 0, summary
    assert summary["failed handshakes"] == 0, summary
    leaf = x509.load_pem_x509_certificates(chain.encode())[0]
    for master in masters:
        assert fingerprint(seen["files"][master]) == fingerprint(leaf), master
    private_leaves = {fingerprint(seen["private_ca"][master]) for master in masters}
    assert len(private_leaves) == 1
    # Back on ACME: a new certificate, the same on both masters (the second got it, and its
    # key, from the deploy), and neither keeps the provided one nor lacks the renewal job.
    acme_leaves = {fingerprint(seen["acme_http"][master]) for master in masters}
    assert len(acme_leaves) == 1
    assert summary["outcome"][masters[1]].startswith("copied from"), summary["outcome"]
    for master in masters:
        left = lab.on(master, f"test -e {PROVIDED_CERTIFICATE} || echo gone").stdout.strip()
        assert left == "gone", f"{master} still keeps {PROVIDED_CERTIFICATE}"
    cron = lab.on(masters[0], f"cat {CRON_FILE}")
    assert cron.returncode == 0 and "wssfleet-renew" in cron.stdout, cron.stdout + cron.stderr
