"""Several masters, one certificate: the helper a timer runs on each master takes a newer
certificate another master serves only when it is for the same key and chains to the
trusted roots for the domain. Real TLS handshakes on loopback (Python's ssl serving what a
master's HAProxy would), real openssl; HAProxy itself is left out (no admin socket: the file
is written as for an HAProxy that is not running)."""

from __future__ import annotations

import datetime
import importlib
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import wssfleet_control.hostside  # noqa: F401  (the helpers import each other as on a host)
from tests.own_ca import key_pem, pem
from tests.processes import free_port

certificate_sync = importlib.import_module("certificate_sync")
haproxy_runtime = importlib.import_module("haproxy_runtime")

DOMAIN = "wss.example.test"
NOW = datetime.datetime.now(datetime.UTC)


def issue(
    subject_key, issuer_key, issuer_name, days: int, ca: bool = False, name=DOMAIN, hours_ago=1
):
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name or subject)
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(hours=hours_ago))
        .not_valid_after(NOW + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def pki(tmp_path, monkeypatch):
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue(ca_key, ca_key, None, 3650, ca=True, name="Test Root")
    roots = tmp_path / "roots.pem"
    roots.write_text(pem(ca))
    key = ec.generate_private_key(ec.SECP256R1())
    served = tmp_path / "served.pem"
    older = issue(key, ca_key, ca.subject, 30)
    served.write_text(pem(older) + key_pem(key))
    monkeypatch.setattr(certificate_sync, "ACME_ROOTS", str(roots))
    monkeypatch.setattr(certificate_sync, "HAPROXY_CERTIFICATE", str(served))
    monkeypatch.setattr(haproxy_runtime, "HAPROXY_CERTIFICATE", str(served))
    monkeypatch.setattr(haproxy_runtime, "ADMIN_SOCKET", str(tmp_path / "no-haproxy.sock"))
    monkeypatch.setattr(haproxy_runtime, "TEXTFILE_DIRECTORY", str(tmp_path / "textfiles"))
    return {"ca": ca, "ca_key": ca_key, "key": key, "served": served, "older": older}


def serving(tmp_path: Path, certificate: x509.Certificate, key) -> str:
    """A TLS server on loopback serving ``certificate``, as a peer master's HAProxy would;
    returns its address:port."""
    chain = tmp_path / f"peer-{certificate.serial_number}.pem"
    chain.write_text(pem(certificate) + key_pem(key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain)
    port = free_port()
    import socket

    listener = socket.create_server(("127.0.0.1", port))

    def answer() -> None:
        for _ in range(4):
            connection, _ = listener.accept()
            try:
                with context.wrap_socket(connection, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    threading.Thread(target=answer, daemon=True).start()
    return f"127.0.0.1:{port}"


def serves(pki) -> str:
    return pki["served"].read_text()


def test_a_newer_certificate_for_the_same_key_is_taken(pki, tmp_path):
    # Issued later though it ends sooner than the one served (a shorter-lived profile).
    newer = issue(pki["key"], pki["ca_key"], pki["ca"].subject, 6, hours_ago=0.5)
    (tmp_path / "textfiles").mkdir()
    peer = serving(tmp_path, newer, pki["key"])
    assert certificate_sync.sync(DOMAIN, [peer]) == 0
    assert pem(newer) in serves(pki) and key_pem(pki["key"]) in serves(pki)
    # Its end date is recorded for the alert that compares the masters.
    recorded = (tmp_path / "textfiles" / "wssfleet_served_certificate.prom").read_text()
    ends = int(newer.not_valid_after_utc.timestamp())
    assert f"wssfleet_served_certificate_not_after_seconds {ends}" in recorded


@pytest.mark.parametrize("case", ["another key", "not from the roots", "older", "other name"])
def test_anything_else_a_peer_serves_is_left_alone(pki, tmp_path, case):
    other_key = ec.generate_private_key(ec.SECP256R1())
    if case == "another key":
        offered, key = issue(other_key, pki["ca_key"], pki["ca"].subject, 90), other_key
    elif case == "not from the roots":
        # Anyone can sign a certificate for a public key: it must chain to the roots.
        offered, key = issue(pki["key"], other_key, None, 90), pki["key"]
    elif case == "older":
        # Issued before the one served, though it ends later.
        offered = issue(pki["key"], pki["ca_key"], pki["ca"].subject, 90, hours_ago=2)
        key = pki["key"]
    else:
        offered = issue(pki["key"], pki["ca_key"], pki["ca"].subject, 90, name="evil.test")
        key = pki["key"]
    (tmp_path / "textfiles").mkdir()
    before = serves(pki)
    peer = serving(tmp_path, offered, key)
    assert certificate_sync.sync(DOMAIN, [peer]) == 0
    assert serves(pki) == before


def test_a_peer_that_does_not_answer_changes_nothing(pki):
    before = serves(pki)
    assert certificate_sync.sync(DOMAIN, [f"127.0.0.1:{free_port()}"]) == 0
    assert serves(pki) == before


# The standby renewer (certificate_standby.py): on every master but the first, it renews only
# while every earlier master is unreachable, and only a CA-issued certificate.


@pytest.fixture
def standby(pki, monkeypatch):
    module = importlib.import_module("certificate_standby")
    monkeypatch.setattr(module, "HAPROXY_CERTIFICATE", str(pki["served"]))
    return module


def test_a_standby_leaves_the_renewal_to_an_earlier_master_that_answers(pki, standby, tmp_path):
    earlier = serving(tmp_path, pki["older"], pki["key"])
    renew, why = standby.decide(True, [f"127.0.0.1:{free_port()}", earlier], DOMAIN, 0)
    assert not renew and earlier in why
    # Forced (make renew) on the wrong master is a failure, said aloud; from cron it is not.
    arguments = ["due", DOMAIN, earlier]
    assert standby.main(arguments) == standby.NOT_HERE
    assert standby.main([*arguments, "--force"]) == standby.DECLINED


def test_a_standby_renews_when_every_earlier_master_is_down_and_the_certificate_is_due(
    pki, standby
):
    down = [f"127.0.0.1:{free_port()}"]
    older = pki["older"]  # issued an hour ago, for 30 days
    starts = older.not_valid_before_utc.timestamp()
    ends = older.not_valid_after_utc.timestamp()
    # certbot's lifetime rule: renew at 2/3 of the lifetime.
    assert standby.decide(False, down, DOMAIN, starts + (ends - starts) * 0.6) == (
        False,
        "every earlier master is unreachable; the certificate is not due yet",
    )
    renew, _ = standby.decide(False, down, DOMAIN, starts + (ends - starts) * 0.7)
    assert renew
    renew, why = standby.decide(True, down, DOMAIN, starts)
    assert renew and "forced" in why


def test_a_standby_never_renews_a_self_signed_certificate(pki, standby):
    # Before the first master's deploy obtained one, every master serves its own throw-away
    # certificate: a request for that key would split the masters' keys.
    own = issue(pki["key"], pki["key"], None, 7)
    pki["served"].write_text(pem(own) + key_pem(pki["key"]))
    renew, why = standby.decide(True, [f"127.0.0.1:{free_port()}"], DOMAIN, 0)
    assert not renew and "first master" in why


@pytest.mark.parametrize(
    ("case", "installed"),
    [
        ("newer, same key", True),
        ("another key", False),
        ("not from the roots", False),
        ("older", False),
        ("other name", False),
        ("its key is not its certificate's", False),
        ("any key onto a placeholder", True),
    ],
)
def test_the_deploys_copy_is_checked_as_the_sync_checks(pki, tmp_path, case, installed):
    """What the deploy copies from the master serving the newest certificate (certificate
    and key) is installed only after the sync's checks: before, it was installed unchecked."""
    other_key = ec.generate_private_key(ec.SECP256R1())
    key = pki["key"]
    offered = issue(key, pki["ca_key"], pki["ca"].subject, 6, hours_ago=0.5)
    if case == "another key":
        key = other_key
        offered = issue(key, pki["ca_key"], pki["ca"].subject, 90, hours_ago=0.5)
    elif case == "not from the roots":
        offered = issue(key, other_key, None, 90, hours_ago=0.5)
    elif case == "older":
        offered = issue(key, pki["ca_key"], pki["ca"].subject, 90, hours_ago=2)
    elif case == "other name":
        offered = issue(key, pki["ca_key"], pki["ca"].subject, 90, name="evil.test", hours_ago=0.5)
    elif case == "its key is not its certificate's":
        key = other_key
    elif case == "any key onto a placeholder":
        # A master that joined serves a self-signed placeholder with a key of its own.
        placeholder = issue(other_key, other_key, None, 30)
        pki["served"].write_text(pem(placeholder) + key_pem(other_key))
    (tmp_path / "textfiles").mkdir()
    before = serves(pki)
    staged = tmp_path / "staged.pem"
    staged.write_text(pem(offered) + key_pem(key))
    code = certificate_sync.install_checked(str(staged), "master m2", [DOMAIN])
    assert not staged.exists()
    assert (code == 0) is installed
    assert (serves(pki) != before) is installed
    if installed:
        assert pem(offered) in serves(pki)
