"""The certificate the masters serve when no ACME server issues it: the operator's files are
checked on the control machine (each fault named, with the file), and the private CA issues,
renews and keeps to its names. OpenSSL, as the clients run it, has the last word on the CA."""

from __future__ import annotations

import datetime
import json
import subprocess

import pytest
from cryptography import x509

from tests.own_ca import OwnCA, pem
from tests.unit.helpers import control_cli
from wssfleet_control import site_certificate
from wssfleet_control.settings import Settings
from wssfleet_control.site_certificate import CertificateError, check

DOMAINS = ["wss.example.com", "chat.example.com"]


@pytest.fixture(scope="module")
def ca() -> OwnCA:
    return OwnCA()


def test_a_complete_chain_for_every_domain_passes(ca):
    chain, key = ca.issue(DOMAINS)
    check(chain, key, DOMAINS, "cert.pem")
    # The root may come along (it is self-signed): still complete.
    check(chain + ca.root_pem, key, DOMAINS, "cert.pem")


def test_a_wildcard_covers_one_label(ca):
    chain, key = ca.issue(["*.example.com"])
    check(chain, key, ["a.example.com", "b.example.com"], "wild.pem")
    with pytest.raises(CertificateError, match=r"does not name deep\.a\.example\.com"):
        check(chain, key, ["deep.a.example.com"], "wild.pem")
    with pytest.raises(CertificateError, match=r"does not name example\.com"):
        check(chain, key, ["example.com"], "wild.pem")


def test_another_certificates_key_is_refused(ca):
    chain, _ = ca.issue(DOMAINS)
    _, other_key = ca.issue(DOMAINS)
    with pytest.raises(CertificateError, match=r"cert.pem: the private key is not the cert"):
        check(chain, other_key, DOMAINS, "cert.pem")


def test_an_expired_or_not_yet_valid_certificate_is_refused(ca):
    chain, key = ca.issue(DOMAINS, days=1, starts_in_days=-2)
    with pytest.raises(CertificateError, match=r"the certificate expired on .* give a renewed"):
        check(chain, key, DOMAINS, "old.pem")
    chain, key = ca.issue(DOMAINS, starts_in_days=2)
    with pytest.raises(CertificateError, match="valid only from"):
        check(chain, key, DOMAINS, "early.pem")


def test_a_missing_name_is_named(ca):
    chain, key = ca.issue(DOMAINS[:1])
    with pytest.raises(CertificateError, match=r"does not name chat.example.com \(it names wss"):
        check(chain, key, DOMAINS, "cert.pem")


def test_a_chain_without_its_intermediate_or_out_of_order_is_refused(ca):
    chain, key = ca.issue(DOMAINS)
    leaf = chain.split("-----END CERTIFICATE-----\n")[0] + "-----END CERTIFICATE-----\n"
    with pytest.raises(CertificateError, match="alone, and its issuer CN=tests' own root: inter"):
        check(leaf, key, DOMAINS, "leaf-only.pem")
    with pytest.raises(CertificateError, match="is not issued by the next one"):
        check(leaf + ca.root_pem, key, DOMAINS, "skipped.pem")
    other, _ = ca.issue(["other.example.com"])
    with pytest.raises(CertificateError, match="is not issued by the next one"):
        check(chain + other, key, DOMAINS, "two-leaves.pem")


def test_an_encrypted_key_is_refused_with_how_to_decrypt_it(ca):
    chain, key = ca.issue(DOMAINS)
    encrypted = subprocess.run(
        ["openssl", "pkey", "-aes256", "-passout", "pass:secret"],
        input=key,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    with pytest.raises(CertificateError, match=r"encrypted .*\(openssl pkey"):
        check(chain, encrypted, DOMAINS, "cert.pem")


def files_settings(**more) -> Settings:
    return Settings(
        domain=DOMAINS[0], extra_domains=(DOMAINS[1],), certificate_source="files", **more
    )


def test_files_are_read_beside_the_inventory_and_a_missing_one_is_named(ca, tmp_path):
    chain, key = ca.issue(DOMAINS)
    (tmp_path / "site.pem").write_text(chain)
    (tmp_path / "site.key").write_text(key)
    settings = files_settings(certificate_file="site.pem", certificate_key_file="site.key")
    material = site_certificate.material(settings, str(tmp_path / "inventory.py"), {})
    assert material.chain == chain and material.key == key
    (tmp_path / "site.key").unlink()
    with pytest.raises(CertificateError, match=r"certificate_key_file: .*site.key cannot be"):
        site_certificate.material(settings, str(tmp_path / "inventory.py"), {})


def test_a_command_may_print_the_chain_and_key(ca, tmp_path):
    chain, key = ca.issue(DOMAINS)
    (tmp_path / "vault.pem").write_text(chain + key)
    settings = files_settings(certificate_command=f"cat {tmp_path / 'vault.pem'}")
    material = site_certificate.material(settings, str(tmp_path / "inventory.py"), {})
    assert material.key == key
    failing = files_settings(certificate_command="false")
    with pytest.raises(CertificateError, match="certificate_command 'false' failed"):
        site_certificate.material(failing, str(tmp_path / "inventory.py"), {})


def openssl_verifies(root: str, chain: str, name: str, tmp_path) -> subprocess.CompletedProcess:
    (tmp_path / "root.pem").write_text(root)
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "root.pem"), "-verify_hostname", name],
        input=chain,
        capture_output=True,
        text=True,
    )


def test_the_private_ca_issues_a_certificate_openssl_accepts_for_every_domain(tmp_path):
    stored: dict[str, str] = {}
    assert site_certificate.ensure_private_ca(stored, DOMAINS)
    material = site_certificate.material(
        Settings(domain=DOMAINS[0], certificate_source="private_ca"), "inventory.py", stored
    )
    root = site_certificate.ca_certificate(stored)
    for name in DOMAINS:
        verified = openssl_verifies(root, material.chain, name, tmp_path)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    # A domain added later outside its name constraints stops the deploy, saying how to
    # make a new CA: clients would refuse what it issued.
    with pytest.raises(CertificateError, match=r"vouches only for names under .* not example\.org"):
        site_certificate.ensure_private_ca(stored, [*DOMAINS, "example.org"])


def test_a_certificate_for_names_outside_the_constraints_fails_in_openssl(tmp_path):
    stored: dict[str, str] = {}
    site_certificate.ensure_private_ca(stored, DOMAINS)
    # Sign one by hand with the CA's key, as a thief of the secrets file would.
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca_key = serialization.load_pem_private_key(stored[site_certificate.CA_KEY].encode(), None)
    ca = x509.load_pem_x509_certificate(stored[site_certificate.CA_CERTIFICATE].encode())
    now = datetime.datetime.now(datetime.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("bank.example.org")]), critical=False
        )
        .sign(ca_key, site_certificate.hashes.SHA256())
    )
    verified = openssl_verifies(
        site_certificate.ca_certificate(stored), pem(leaf), "bank.example.org", tmp_path
    )
    assert verified.returncode != 0 and "permitted subtree violation" in verified.stderr


def test_the_private_ca_keeps_a_fresh_certificate_and_renews_a_due_or_renamed_one():
    stored: dict[str, str] = {}
    site_certificate.ensure_private_ca(stored, DOMAINS)
    first = json.loads(stored[site_certificate.ISSUED])
    ca = stored[site_certificate.CA_CERTIFICATE]
    assert not site_certificate.ensure_private_ca(stored, DOMAINS)
    assert json.loads(stored[site_certificate.ISSUED]) == first
    # Due (29 days left): its successor, valid since day 60, takes over, and gets one.
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=61)
    assert site_certificate.ensure_private_ca(stored, DOMAINS, now=later)
    promoted = json.loads(stored[site_certificate.ISSUED])
    assert (promoted["chain"], promoted["key"]) == (first["next_chain"], first["next_key"])
    assert promoted["next_chain"] != first["next_chain"]
    # Long past both (no deploy for half a year): a fresh one from now.
    much_later = later + datetime.timedelta(days=200)
    assert site_certificate.ensure_private_ca(stored, DOMAINS, now=much_later)
    fresh = json.loads(stored[site_certificate.ISSUED])
    leaf = x509.load_pem_x509_certificate(fresh["chain"].encode())
    assert leaf.not_valid_before_utc <= much_later < leaf.not_valid_after_utc
    assert site_certificate.ensure_private_ca(stored, [*DOMAINS, "eu.wss.example.com"])
    assert json.loads(stored[site_certificate.ISSUED])["names"][-1] == "eu.wss.example.com"
    # One CA throughout: clients keep trusting the same root.
    assert stored[site_certificate.CA_CERTIFICATE] == ca


INVENTORY = (
    "master = [('m', {{'ssh_hostname': '127.0.0.10'}})]\n"
    "workers = [('w', {{'ssh_hostname': '127.0.0.11'}})]\n"
    "all = (['m', 'w'], {{'wssfleet_inventory': __file__, 'wssfleet': {settings!r}}})\n"
)


def test_a_bad_certificate_file_stops_check_and_deploy_before_any_host(ca, tmp_path):
    chain, key = ca.issue(DOMAINS[:1])
    (tmp_path / "site.pem").write_text(chain)
    (tmp_path / "site.key").write_text(key)
    settings = {
        "domain": DOMAINS[0],
        "extra_domains": [DOMAINS[1]],
        "certificate_source": "files",
        "certificate_file": "site.pem",
        "certificate_key_file": "site.key",
    }
    path = tmp_path / "staging.py"
    path.write_text(INVENTORY.format(settings=settings))
    for command in ("check", "deploy"):
        # The hosts are addresses nothing answers on: a deploy that reached for them would
        # fail otherwise (exit 2) and later.
        result = control_cli(command, "-i", str(path))
        assert result.returncode == 3, result.stdout + result.stderr
        assert f"{tmp_path / 'site.pem'} with key {tmp_path / 'site.key'}" in result.stderr
        assert "does not name chat.example.com" in result.stderr


DNS01 = {
    "acme_email": "ops@example.com",
    "certificate_source": "acme_dns",
    "acme_dns_server": "192.0.2.53",
    "acme_dns_tsig_key": "acme-update",
}


def test_a_wildcard_needs_a_source_that_can_prove_it():
    with pytest.raises(ValueError, match=r"HTTP-01 cannot prove a wildcard"):
        Settings(domain=DOMAINS[0], extra_domains=("*.example.com",), acme_email="ops@example.com")
    settings = Settings(domain=DOMAINS[0], extra_domains=("*.example.com",), **DNS01)
    assert settings.acme and "https://*.example.com" not in settings.origins
    with pytest.raises(ValueError, match=r"a wildcard like \*\.example\.com"):
        Settings(domain=DOMAINS[0], extra_domains=("*.*.example.com",), **DNS01)


def test_dns01_names_its_missing_settings_and_refuses_them_elsewhere():
    with pytest.raises(ValueError, match="needs acme_dns_server and acme_dns_tsig_key"):
        Settings(domain=DOMAINS[0], certificate_source="acme_dns")
    with pytest.raises(ValueError, match="acme_dns_server is used only with"):
        Settings(domain=DOMAINS[0], acme_dns_server="192.0.2.53", acme_email="a@example.com")
    with pytest.raises(ValueError, match="give an IP address"):
        Settings(domain=DOMAINS[0], **{**DNS01, "acme_dns_server": "ns1.example.com"})


def test_the_successor_is_valid_from_30_days_before_the_current_one_ends(tmp_path):
    stored: dict[str, str] = {}
    site_certificate.ensure_private_ca(stored, ["a.b"])
    issued = json.loads(stored[site_certificate.ISSUED])
    current = x509.load_pem_x509_certificate(issued["chain"].encode())
    successor = x509.load_pem_x509_certificate(issued["next_chain"].encode())
    overlap = current.not_valid_after_utc - successor.not_valid_before_utc
    assert overlap == datetime.timedelta(days=site_certificate.RENEW_DAYS)
    lifetime = successor.not_valid_after_utc - successor.not_valid_before_utc
    assert lifetime == datetime.timedelta(days=site_certificate.LEAF_DAYS)
    root = site_certificate.ca_certificate(stored)
    (tmp_path / "root.pem").write_text(root)
    # OpenSSL takes it a minute after it starts, and refuses it now (not yet valid: 2).
    for moment, verdict in ((successor.not_valid_before_utc, 0), (datetime.datetime.now(), 2)):
        at = str(int(moment.timestamp()) + 60)
        root_file = str(tmp_path / "root.pem")
        verified = subprocess.run(
            ["openssl", "verify", "-CAfile", root_file, "-attime", at, "-verify_hostname", "a.b"],
            input=issued["next_chain"],
            capture_output=True,
            text=True,
        )
        assert verified.returncode == verdict, verified.stderr


def test_check_refuses_a_domain_outside_the_private_cas_names(tmp_path):
    path = tmp_path / "internal.py"
    settings = {"domain": DOMAINS[0], "certificate_source": "private_ca"}
    path.write_text(INVENTORY.format(settings=settings))
    assert control_cli("check", "-i", str(path)).returncode == 0
    stored: dict[str, str] = {}
    site_certificate.ensure_private_ca(stored, DOMAINS[:1])
    secrets_file = tmp_path / ".secrets" / "internal.json"
    secrets_file.parent.mkdir()
    secrets_file.write_text(json.dumps(stored))
    path.write_text(INVENTORY.format(settings={**settings, "extra_domains": ["other.example"]}))
    result = control_cli("check", "-i", str(path))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "vouches only for names under wss.example.com" in result.stderr
