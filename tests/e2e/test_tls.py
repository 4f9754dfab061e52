"""HAProxy's front door: redirect, HSTS, TLS versions, and the ACME certificate."""

from __future__ import annotations

import http.client
import socket
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec


def https_get(lab, path: str, **headers: str) -> http.client.HTTPResponse:
    connection = http.client.HTTPSConnection(lab.master_address, 443, timeout=10, context=_sni(lab))
    connection.request("GET", path, headers={"Host": lab.domain, **headers})
    return connection.getresponse()


def _sni(lab) -> ssl.SSLContext:
    context = lab.tls_context()
    context.check_hostname = False  # checked in the handshake test below, by name
    return context


def test_http_redirects_to_https(lab):
    connection = http.client.HTTPConnection(lab.master_address, 80, timeout=10)
    connection.request("GET", "/some/path?x=1", headers={"Host": lab.domain})
    reply = connection.getresponse()
    assert reply.status == 301
    assert reply.getheader("Location") == f"https://{lab.domain}/some/path?x=1"


def test_acme_challenges_are_not_redirected(lab):
    connection = http.client.HTTPConnection(lab.master_address, 80, timeout=10)
    connection.request("GET", "/.well-known/acme-challenge/probe", headers={"Host": lab.domain})
    # certbot listens only while it validates: HAProxy answers 503, not a redirect.
    assert connection.getresponse().status == 503


def test_https_sends_hsts(lab):
    reply = https_get(lab, "/")
    assert reply.status == 200
    assert reply.getheader("Strict-Transport-Security") == "max-age=63072000"


def handshake(lab, version: ssl.TLSVersion) -> ssl.SSLSocket:
    context = lab.tls_context()
    context.minimum_version = context.maximum_version = version
    if version < ssl.TLSVersion.TLSv1_2:
        context.set_ciphers("ALL:@SECLEVEL=0")  # let our client offer what the server must refuse
    raw = socket.create_connection((lab.master_address, 443), timeout=10)
    return context.wrap_socket(raw, server_hostname=lab.domain)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_before_1_2_is_refused_by_the_server(lab, version):
    with pytest.raises(ssl.SSLError) as refused:
        handshake(lab, version)
    # The server's alert, not our client declining to try.
    assert "alert protocol version" in str(refused.value).lower()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_are_accepted(lab, version):
    with handshake(lab, version) as connection:
        assert connection.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]


def test_certificate_is_ecdsa_for_the_domain_and_chains_to_the_lab_acme_root(lab):
    # wrap_socket verifies the chain against the lab's ACME root and the name against SNI.
    with handshake(lab, ssl.TLSVersion.TLSv1_3) as connection:
        certificate = x509.load_der_x509_certificate(connection.getpeercert(binary_form=True))
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert lab.domain in names.value.get_values_for_type(x509.DNSName)
    assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)
    assert "Pebble" in certificate.issuer.rfc4514_string()
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert 89 <= lifetime.days <= 90


@pytest.mark.parametrize("path", ["/healthz", "/internal/shed?count=1", "/healthz?x=1"])
def test_internals_are_not_served_through_the_public_front_end(lab, path):
    reply = https_get(lab, path)
    assert reply.status == 404
    assert b"worker" not in reply.read()


@pytest.mark.parametrize(
    "path",
    ["//x/healthz", "//internal/shed?count=1", "/ws/../healthz", "/./healthz", "/ws/..%2Fhealthz"],
)
def test_paths_that_are_not_normal_are_refused_at_the_edge(lab, path):
    # A worker's urlsplit once read '//x/healthz' as '/healthz'; HAProxy refuses such paths.
    reply = https_get(lab, path)
    assert reply.status == 400, path
    assert b"worker" not in reply.read()


def test_a_client_sent_forwarded_for_is_replaced_not_appended(lab):
    # Two values (the client's and HAProxy's) once made the worker answer 500 with a
    # traceback; HAProxy now sets the header, and a bad token is a plain 401.
    reply = https_get(
        lab, "/ws?token=bad", **{"X-Forwarded-For": "203.0.113.9", "Upgrade": "websocket"}
    )
    assert reply.status == 401
