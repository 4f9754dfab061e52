"""DNS-01 through each provider (acme_dns_provider): its settings, its secret, what certbot is
given, and the lab's Cloudflare and Route 53 stand-in (lab/dns_api.py) that the end-to-end
test issues through."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lab import dns_api
from roles.certificates import (
    CERTBOT_REQUIREMENTS,
    authenticator,
    certbot_environment,
    certbot_requirements,
    challenge_options,
)
from tests.processes import render
from tests.unit.helpers import control_cli
from tests.unit.test_site_certificate import DNS01, DOMAINS, INVENTORY
from wssfleet_control.hostside.layout import ACME_DNS_CREDENTIALS
from wssfleet_control.settings import Settings

CLOUDFLARE = {"acme_email": "ops@example.com", "certificate_source": "acme_dns"}
CLOUDFLARE["acme_dns_provider"] = "cloudflare"
ROUTE53 = {**CLOUDFLARE, "acme_dns_provider": "route53"}
KEY_ID = "AKIAIOSFODNN7EXAMPLE"


class FleetOf:
    """What challenge_options reads of a fleet: its settings and its masters."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.masters = ["m1"]


def test_each_provider_takes_its_own_settings_and_refuses_anothers():
    Settings(domain=DOMAINS[0], **CLOUDFLARE)
    Settings(domain=DOMAINS[0], **ROUTE53, acme_dns_route53_access_key_id=KEY_ID)
    with pytest.raises(ValueError, match="acme_dns_server is used only with acme_dns_provider"):
        Settings(domain=DOMAINS[0], **CLOUDFLARE, acme_dns_server="192.0.2.53")
    with pytest.raises(ValueError, match=r"route53_access_key_id is used only with .*'route53'"):
        Settings(domain=DOMAINS[0], **CLOUDFLARE, acme_dns_route53_access_key_id=KEY_ID)
    with pytest.raises(ValueError, match=r"acme_dns_api_url is used only with .*'cloudflare'"):
        Settings(domain=DOMAINS[0], **DNS01, acme_dns_api_url="https://dns.example.com")
    with pytest.raises(ValueError, match="used only with certificate_source='acme_dns'"):
        Settings(
            domain=DOMAINS[0], acme_email="a@example.com", acme_dns_api_url="https://a.example"
        )
    with pytest.raises(ValueError, match="give an AWS access key ID"):
        Settings(domain=DOMAINS[0], **ROUTE53, acme_dns_route53_access_key_id="key; rm -rf /")


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("https://api.cloudflare.com/client/v4/", "https://api.cloudflare.com/client/v4"),
        ("https://route53.amazonaws.com.cn", "https://route53.amazonaws.com.cn"),
        ("http://10.0.0.5:8056/client/v4", "http://10.0.0.5:8056/client/v4"),
        # A token in clear text crosses only a private network.
        ("http://api.cloudflare.com/client/v4", None),
        ("http://104.16.132.229/client/v4", None),
        ("https://api.example.com/?next=x", None),
        ("ftp://10.0.0.5/", None),
    ],
)
def test_the_api_url_is_https_or_http_to_a_private_address(url, accepted):
    if accepted is None:
        with pytest.raises(ValueError, match=r"give an https:// URL \(http:// only to a private"):
            Settings(domain=DOMAINS[0], **CLOUDFLARE, acme_dns_api_url=url)
        return
    settings = Settings(domain=DOMAINS[0], **CLOUDFLARE, acme_dns_api_url=url)
    assert settings.acme_dns_api_url == accepted


def test_certbot_is_given_the_providers_plugin_credentials_and_api():
    cloudflare = Settings(
        domain=DOMAINS[0], **CLOUDFLARE, acme_dns_api_url="http://10.0.0.5:8056/client/v4"
    )
    assert authenticator(cloudflare) == "dns-cloudflare"
    assert challenge_options(FleetOf(cloudflare)) == (
        f"--authenticator dns-cloudflare --dns-cloudflare-credentials "
        f"{ACME_DNS_CREDENTIALS['cloudflare']} --dns-cloudflare-propagation-seconds 60"
    )
    assert certbot_environment(cloudflare, "") == [
        ("CLOUDFLARE_BASE_URL", "http://10.0.0.5:8056/client/v4")
    ]
    assert "certbot-dns-cloudflare==5.8.0" in certbot_requirements(cloudflare)
    assert not any("boto" in pin for pin in certbot_requirements(cloudflare))

    route53 = Settings(domain=DOMAINS[0], **ROUTE53, acme_dns_route53_access_key_id=KEY_ID)
    assert challenge_options(FleetOf(route53)) == "--authenticator dns-route53"
    assert certbot_environment(route53, "/etc/wssfleet/acme-ca.pem") == [
        ("REQUESTS_CA_BUNDLE", "/etc/wssfleet/acme-ca.pem"),
        ("AWS_SHARED_CREDENTIALS_FILE", ACME_DNS_CREDENTIALS["route53"]),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ]
    # The master's own role: no credentials file to point at.
    keyless = Settings(domain=DOMAINS[0], **ROUTE53)
    assert ("AWS_CONFIG_FILE", "/dev/null") in certbot_environment(keyless, "")
    assert all(
        name != "AWS_SHARED_CREDENTIALS_FILE" for name, _ in certbot_environment(keyless, "")
    )

    # RFC 2136 and HTTP-01 carry no third-party SDK.
    assert certbot_requirements(Settings(domain=DOMAINS[0], **DNS01)) == CERTBOT_REQUIREMENTS
    http = Settings(domain=DOMAINS[0], acme_email="a@example.com")
    assert (
        certbot_requirements(http) == CERTBOT_REQUIREMENTS and authenticator(http) == "standalone"
    )


def test_the_renewal_script_exports_what_the_deploys_request_had():
    route53 = Settings(domain=DOMAINS[0], **ROUTE53, acme_dns_api_url="https://r53.example.com")
    script = render(
        "certificates",
        "wssfleet-renew.j2",
        environment=certbot_environment(route53, ""),
        random_delay=0,
        standby="",
        certbot="/usr/local/bin/certbot",
        cert_name="wssfleet",
        challenge=challenge_options(FleetOf(route53)),
        reuse_key=False,
        metrics="/m.py",
        quote=__import__("shlex").quote,
    )
    assert "export AWS_ENDPOINT_URL_ROUTE_53=https://r53.example.com\n" in script
    assert "export AWS_CONFIG_FILE=/dev/null\n" in script
    assert "--authenticator dns-route53" in script


def test_the_credentials_files_hold_what_each_plugin_reads():
    cloudflare = render("certificates", "acme-dns-cloudflare.ini.j2", token="t0ken")
    assert "\ndns_cloudflare_api_token = t0ken\n" in cloudflare
    route53 = render("certificates", "acme-dns-route53.ini.j2", key_id=KEY_ID, secret="s3cret")
    assert f"[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = s3cret\n" in route53


@pytest.mark.parametrize(
    ("settings", "secret"),
    [
        (DNS01, "acme_dns_tsig_secret"),
        (CLOUDFLARE, "acme_dns_cloudflare_api_token"),
        (
            {**ROUTE53, "acme_dns_route53_access_key_id": KEY_ID},
            "acme_dns_route53_secret_access_key",
        ),
    ],
)
def test_a_provider_without_its_secret_stops_before_any_host(tmp_path, settings, secret):
    path = tmp_path / "staging.py"
    path.write_text(
        INVENTORY.format(
            settings={"domain": DOMAINS[0], "acme_server": "https://192.0.2.1/dir", **settings}
        )
    )
    result = control_cli("deploy", "-i", str(path))
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"needs the secret {secret}" in result.stderr
    assert f"WSSFLEET_SECRET_{secret.upper()}" in result.stderr


def test_route53_with_the_masters_own_role_needs_no_secret_and_refuses_a_stray_one(tmp_path):
    path = tmp_path / "staging.py"
    path.write_text(
        INVENTORY.format(
            settings={"domain": DOMAINS[0], "acme_server": "https://192.0.2.1/dir", **ROUTE53}
        )
    )
    stray = {"WSSFLEET_SECRET_ACME_DNS_ROUTE53_SECRET_ACCESS_KEY": "s3cret"}
    result = control_cli("check", "-i", str(path), **stray)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "acme_dns_route53_access_key_id is not" in result.stderr
    assert control_cli("check", "-i", str(path)).returncode == 0


# The lab's stand-in, on loopback, with a knotc that records what it was asked.


@pytest.fixture
def stand_in(tmp_path):
    calls = tmp_path / "knotc-calls"
    knotc = tmp_path / "knotc"
    knotc.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {calls}\n')
    knotc.chmod(0o755)
    config = {
        "address": "127.0.0.1",
        "port": 0,
        "zone": "lab.test",
        "knotc": [str(knotc)],
        **dns_api.credentials(),
    }
    server = dns_api.Server(config, tmp_path / "journal")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.base = f"http://127.0.0.1:{server.server_address[1]}"
    server.calls = calls
    yield server
    server.shutdown()


def call(url: str, method: str = "GET", body: bytes | None = None, headers=None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_the_cloudflare_stand_in_checks_the_token_and_writes_knots_zone(stand_in):
    api = stand_in.base + dns_api.CLOUDFLARE_PREFIX
    status, body = call(f"{api}/zones?name=lab.test", headers={"Authorization": "Bearer wrong"})
    assert status == 403 and json.loads(body)["errors"][0]["code"] == 9109
    bearer = {"Authorization": f"Bearer {stand_in.config['cloudflare_api_token']}"}
    assert json.loads(call(f"{api}/zones?name=example.com", headers=bearer)[1])["result"] == []
    zone = json.loads(call(f"{api}/zones?name=lab.test&per_page=1", headers=bearer)[1])
    zone_id = zone["result"][0]["id"]
    record = {"type": "TXT", "name": "_acme-challenge.wss.lab.test", "content": "v1", "ttl": 120}
    status, body = call(
        f"{api}/zones/{zone_id}/dns_records", "POST", json.dumps(record).encode(), bearer
    )
    assert status == 200
    record_id = json.loads(body)["result"]["id"]
    listed = call(
        f"{api}/zones/{zone_id}/dns_records?type=TXT&name.exact=_acme-challenge.wss.lab.test"
        "&content.exact=v1&per_page=1",
        headers=bearer,
    )
    assert [r["id"] for r in json.loads(listed[1])["result"]] == [record_id]
    assert call(f"{api}/zones/{zone_id}/dns_records/{record_id}", "DELETE", None, bearer)[0] == 200
    assert stand_in.calls.read_text().splitlines() == [
        "zone-begin lab.test",
        'zone-set lab.test _acme-challenge.wss 60 TXT "v1"',
        "zone-commit lab.test",
        "zone-begin lab.test",
        'zone-unset lab.test _acme-challenge.wss TXT "v1"',
        "zone-commit lab.test",
    ]


def signed(stand_in, method: str, path: str, body: bytes, secret: str) -> dict[str, str]:
    """Headers as botocore signs a Route 53 request (Signature Version 4), by hand."""
    host = stand_in.base.removeprefix("http://")
    amz_date, day = "20261207T120000Z", "20261207"
    payload = hashlib.sha256(body).hexdigest()
    headers = {"host": host, "x-amz-date": amz_date}
    names = ";".join(sorted(headers))
    canonical = "\n".join(
        [method, path, "", "".join(f"{n}:{headers[n]}\n" for n in sorted(headers)), names, payload]
    )
    scope = f"{day}/us-east-1/route53/aws4_request"
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{digest}"
    key = ("AWS4" + secret).encode()
    for part in (day, "us-east-1", "route53", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    key_id = stand_in.config["route53_access_key_id"]
    return {
        "X-Amz-Date": amz_date,
        "Authorization": f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, "
        f"SignedHeaders={names}, Signature={signature}",
    }


def test_the_route53_stand_in_checks_the_signature_and_replaces_the_record_set(stand_in):
    path = f"/2013-04-01/hostedzone/{dns_api.HOSTED_ZONE_ID}/rrset/"
    body = (
        f'<ChangeResourceRecordSetsRequest xmlns="{dns_api.ROUTE53_NAMESPACE}"><ChangeBatch>'
        "<Changes><Change><Action>UPSERT</Action><ResourceRecordSet>"
        "<Name>_acme-challenge.wss.lab.test</Name><Type>TXT</Type><TTL>10</TTL>"
        '<ResourceRecords><ResourceRecord><Value>"a"</Value></ResourceRecord>'
        '<ResourceRecord><Value>"b"</Value></ResourceRecord></ResourceRecords>'
        "</ResourceRecordSet></Change></Changes></ChangeBatch></ChangeResourceRecordSetsRequest>"
    ).encode()
    wrong = signed(stand_in, "POST", path, body, "not-the-secret")
    status, answer = call(stand_in.base + path, "POST", body, wrong)
    assert status == 403 and b"SignatureDoesNotMatch" in answer
    assert not Path(stand_in.calls).exists()
    right = signed(stand_in, "POST", path, body, stand_in.config["route53_secret_access_key"])
    status, answer = call(stand_in.base + path, "POST", body, right)
    assert status == 200 and b"<Status>INSYNC</Status>" in answer, answer
    assert stand_in.calls.read_text().splitlines() == [
        "zone-begin lab.test",
        "zone-unset lab.test _acme-challenge.wss TXT",
        'zone-set lab.test _acme-challenge.wss 60 TXT "a"',
        'zone-set lab.test _acme-challenge.wss 60 TXT "b"',
        "zone-commit lab.test",
    ]
    journal = [json.loads(line) for line in stand_in.journal_file.read_text().splitlines()]
    assert [(entry["api"], entry["call"]) for entry in journal] == [
        ("route53", "refused"),
        ("route53", "upsert"),
    ]
