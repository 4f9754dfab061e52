"""When certbot renews, as the master's metrics and `make status` say: the CA's renewal
information (RFC 9773) when it answers, else renew_before_expiry, else the lifetime rule; and
the certificate identifier ARI is asked about, checked against cryptography's own reading."""

from __future__ import annotations

import base64
import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# On the master the helpers sit side by side, and certificate_metrics imports acme_info so;
# importing the package puts their directory on the path the same way.
import wssfleet_control.hostside  # noqa: F401

# isort: split
import acme_info
import certificate_metrics

NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
DAY = 86400


def certificate(path: Path, lifetime: datetime.timedelta, serial: int) -> x509.Certificate:
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wss.example.test")])
    built = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW)
        .not_valid_after(NOW + lifetime)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )
    path.write_bytes(built.public_bytes(serialization.Encoding.PEM))
    return built


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize("serial", [0x0123456789ABCDEF, 0xFF00000000000000000001, 0x7F])
def test_the_ari_certificate_id_is_the_key_identifier_and_the_der_serial(tmp_path, serial):
    built = certificate(tmp_path / "cert.pem", datetime.timedelta(days=90), serial)
    key_id = built.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    length = serial.bit_length() // 8 + 1  # DER: a leading zero byte when the high bit is set
    expected = f"{b64url(key_id.key_identifier)}.{b64url(serial.to_bytes(length, 'big'))}"
    assert acme_info.certificate_id(str(tmp_path / "cert.pem")) == expected


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2027-01-29T18:11:25Z", 1801246285.0),
        ("2027-01-29T18:11:25.5Z", 1801246285.5),
        ("2027-01-29T19:11:25+01:00", 1801246285.0),
    ],
)
def test_ari_times_are_read_as_rfc_3339(text, seconds):
    assert acme_info._timestamp(text) == seconds


@pytest.fixture
def lineage(tmp_path, monkeypatch):
    """A certificate and its certbot renewal config in a temporary directory."""
    monkeypatch.setattr(certificate_metrics, "CERTIFICATE", tmp_path / "cert.pem")
    monkeypatch.setattr(certificate_metrics, "RENEWAL_CONFIG", tmp_path / "wssfleet.conf")

    def make(lifetime_days: float, config: str = "", window=None):
        certificate(tmp_path / "cert.pem", datetime.timedelta(days=lifetime_days), 1234)
        (tmp_path / "wssfleet.conf").write_text("server = https://ca.example.test/dir\n" + config)
        monkeypatch.setattr(acme_info, "renewal_window", lambda directory, cert: window)
        dates = certificate_metrics.certificate_dates()
        assert dates is not None
        return certificate_metrics.renewal_plan(*dates)

    return make


def test_without_ari_a_90_day_certificate_renews_at_two_thirds(lineage):
    plan = lineage(90)
    assert plan == {"next_renewal": NOW.timestamp() + 60 * DAY, "renewal_rule": "lifetime"}


def test_without_ari_a_6_day_certificate_renews_at_half_its_lifetime(lineage):
    plan = lineage(6)
    assert plan == {"next_renewal": NOW.timestamp() + 3 * DAY, "renewal_rule": "lifetime"}


def test_the_ca_s_window_decides_when_it_answers(lineage):
    start = NOW.timestamp() + 40 * DAY
    plan = lineage(64, window=(start, start + DAY))
    assert plan == {"next_renewal": start, "renewal_rule": "ari"}


def test_ari_is_not_asked_while_certbot_waits_for_its_retry_after(lineage):
    later = (datetime.datetime.now() + datetime.timedelta(hours=6)).isoformat(timespec="seconds")
    config = f"[acme_renewal_info]\nari_retry_after = {later}\n"
    plan = lineage(6, config, window=(NOW.timestamp() - DAY, NOW.timestamp()))
    assert plan["renewal_rule"] == "lifetime"


def test_renew_before_expiry_wins_when_it_comes_first(lineage):
    plan = lineage(90, "renew_before_expiry = 45 days\n", window=(NOW.timestamp() + 59 * DAY, 0))
    assert plan == {
        "next_renewal": NOW.timestamp() + 45 * DAY,
        "renewal_rule": "renew_before_expiry",
    }


def test_a_commented_renew_before_expiry_is_not_a_setting(lineage):
    assert lineage(90, "# renew_before_expiry = 30 days\n")["renewal_rule"] == "lifetime"
