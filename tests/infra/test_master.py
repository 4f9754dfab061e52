"""The master: HAProxy, its certificate, renewals, and a runtime API kept off the network."""

from __future__ import annotations

import calendar
import shlex
import time

import pytest

from roles.certificates import CERTBOT_VERSION
from wssfleet_control.hostside.layout import (
    ACME_DNS_CREDENTIALS,
    ADMIN_SOCKET,
    BACKEND,
    CANARY_ENVIRONMENT,
    CANARY_METRICS_PORT,
    CANARY_UNIT,
    CERTBOT,
    CERTIFICATE_SYNC_UNIT,
    HAPROXY_CERTIFICATE,
    HAPROXY_CONFIG,
    HAPROXY_METRICS_PORT,
    HAPROXY_PEERS_PORT,
    HELPERS,
    NODE_EXPORTER_PORT,
    PROMETHEUS_PORT,
    PROVIDED_CERTIFICATE,
    REDIS_EXPORTER_PORT,
    RENEW_COMMAND,
    STATS_SOCKET,
)


def test_haproxy_is_active_and_enabled(on, master):
    service = on(master).service("haproxy")
    assert service.is_running and service.is_enabled


def test_rebalancer_is_active_enabled_and_reads_haproxy(on, master):
    host = on(master)
    service = host.service("wssfleet-rebalancer")
    assert service.is_running and service.is_enabled
    log = host.check_output("journalctl -u wssfleet-rebalancer -n 50 --no-pager -o cat")
    assert '"event": "started"' in log
    assert '"event": "error"' not in log.split('"event": "started"')[-1], log


ASK_STATS_SOCKET = (
    f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({STATS_SOCKET!r}); "
    f"s.sendall(b'disable server {BACKEND}/x\\n'); print(s.recv(4096).decode())"
)


SHOW_PEERS = (
    f"import sys; sys.path.insert(0, {HELPERS!r}); import haproxy_runtime; "
    "print(haproxy_runtime.ask('show peers'))"
)


def test_rebalancer_is_confined_and_only_reads_haproxy(on, master, exposure):
    host = on(master)
    assert exposure(host, "wssfleet-rebalancer.service")
    # Its socket reads only; the admin socket is root's alone.
    assert host.file(ADMIN_SOCKET).mode == 0o600
    answer = host.check_output(f"python3 -c {shlex.quote(ASK_STATS_SOCKET)}")
    assert "Permission denied" in answer, answer


def test_the_canary_runs_confined_and_its_key_is_root_s_alone(on, master, exposure):
    host = on(master)
    service = host.service(CANARY_UNIT)
    assert service.is_running and service.is_enabled
    assert exposure(host, CANARY_UNIT)
    key = host.file(CANARY_ENVIRONMENT)
    assert (key.user, key.group, key.mode) == ("root", "root", 0o600)
    # Unprivileged: systemd reads the key into its environment, the process cannot reread it.
    user = host.check_output(f"systemctl show -p User -p DynamicUser --value {CANARY_UNIT}")
    assert "yes" in user.split(), user


def test_haproxy_config_is_valid(on, master):
    result = on(master).run(f"haproxy -c -f {HAPROXY_CONFIG}")
    assert result.rc == 0, result.stderr


def test_haproxy_listens_on_80_and_443(on, master):
    host = on(master)
    for port in (80, 443):
        assert host.socket(f"tcp://0.0.0.0:{port}").is_listening, port


def test_certificate_covers_every_domain_with_a_third_of_its_lifetime_left(on, master, fleet):
    # A third, not a number of days: 90-day, 64-day and 6-day certificates alike (the
    # WssfleetCertificateExpiringSoon alert uses the same measure).
    host = on(master)
    dates = host.check_output(f"openssl x509 -noout -startdate -enddate -in {HAPROXY_CERTIFICATE}")
    fields = dict(line.split("=", 1) for line in dates.splitlines())
    not_before, not_after = (
        calendar.timegm(time.strptime(fields[key], "%b %d %H:%M:%S %Y %Z"))
        for key in ("notBefore", "notAfter")
    )
    if fleet.settings.acme:
        assert not_after - time.time() > (not_after - not_before) / 3, dates
    else:
        # Nothing renews a provided certificate between deploys: the alert's 14 days.
        assert not_after - time.time() > 14 * 86400, dates
    names = host.check_output(f"openssl x509 -noout -ext subjectAltName -in {HAPROXY_CERTIFICATE}")
    for domain in fleet.settings.domains:
        assert f"DNS:{domain}" in names, domain


def test_served_certificate_is_the_one_on_disk(on, master, fleet):
    host = on(master)
    fingerprint = "openssl x509 -noout -fingerprint -sha256"
    on_disk = host.check_output(f"{fingerprint} -in {HAPROXY_CERTIFICATE}")
    served = host.check_output(
        f"openssl s_client -connect 127.0.0.1:443 -servername {fleet.settings.domain} "
        f"</dev/null 2>/dev/null | {fingerprint}"
    )
    assert served == on_disk


def test_a_provided_certificate_has_no_acme_renewal_beside_it_and_a_private_key(on, master, fleet):
    if fleet.settings.acme:
        pytest.skip("certificate_source acme_http: certbot renews it")
    host = on(master)
    assert not host.file("/etc/cron.d/wssfleet-certbot").exists
    key = host.file(f"{PROVIDED_CERTIFICATE}/privkey.pem")
    assert key.user == "root" and key.mode == 0o600


def test_cron_renews_through_the_wssfleet_script(on, certificate_master, fleet):
    if not fleet.settings.acme:
        pytest.skip(f"certificate_source {fleet.settings.certificate_source}: no ACME renewal")
    entry = on(certificate_master).file("/etc/cron.d/wssfleet-certbot")
    assert entry.exists and entry.user == "root"
    assert f"{RENEW_COMMAND} --random-delay" in entry.content_string
    assert on(certificate_master).service("cron").is_running


def test_certbot_is_the_pinned_one_and_debian_s_is_absent(on, certificate_master, fleet):
    if not fleet.settings.acme:
        pytest.skip(f"certificate_source {fleet.settings.certificate_source}: no certbot runs")
    host = on(certificate_master)
    assert host.check_output("certbot --version") == f"certbot {CERTBOT_VERSION}"
    # Its DNS-01 plugins beside it (certificate_source acme_dns): RFC 2136 always, and the
    # provider's when it is another (acme_dns_provider); no other provider's SDK.
    plugins = host.check_output("certbot plugins --text 2>/dev/null")
    settings = fleet.settings
    provider = settings.dns_provider
    for name in ("rfc2136", "cloudflare", "route53"):
        wanted = name in ("rfc2136", provider)
        assert (f"* dns-{name}\n" in plugins) == wanted, (name, plugins)
    # Only the provider in use has credentials here, root's alone.
    for name, path in ACME_DNS_CREDENTIALS.items():
        credentials = host.file(path)
        if name == provider and credentials.exists:
            assert credentials.user == "root" and credentials.mode == 0o600, path
        else:
            assert not credentials.exists, f"{path}: {name} is not this fleet's DNS provider"
    assert host.file(CERTBOT).is_symlink
    # Debian's package would bring a second renewer (certbot.timer) and an older certbot.
    assert not host.package("certbot").is_installed
    assert not host.file("/usr/bin/certbot").exists


def test_runtime_api_is_a_local_socket_only(on, master, fleet):
    host = on(master)
    assert host.file(ADMIN_SOCKET).is_socket
    roles = fleet.roles_of(master.name)
    expected = {22, 80, 443}
    # On the private address (and loopback): Redis, its Sentinel, HAProxy's peers.
    if "redis" in roles:
        expected.add(fleet.settings.redis_port)
    if "sentinel" in roles:
        expected.add(fleet.settings.redis_sentinel_port)
    # The monitoring ports, on the private address only (the firewall admits the monitoring
    # hosts alone; tests/infra/test_monitoring.py checks where they listen).
    private = {NODE_EXPORTER_PORT, HAPROXY_METRICS_PORT, CANARY_METRICS_PORT}
    if len(fleet.masters) > 1:
        private.add(HAPROXY_PEERS_PORT)
    if "redis" in roles:
        private.add(REDIS_EXPORTER_PORT)
    if "monitoring" in roles:
        private.add(PROMETHEUS_PORT)
    listeners = [line.split()[3] for line in host.check_output("ss -Hltn").splitlines()]
    public = {
        int(address.rsplit(":", 1)[1])
        for address in listeners
        if not address.startswith(("127.", "[::1]", f"{master.address}:"))
    }
    on_private = {
        int(address.rsplit(":", 1)[1])
        for address in listeners
        if address.startswith(f"{master.address}:")
    }
    assert public <= expected, f"unexpected listeners: {sorted(public - expected)}"
    assert on_private <= expected | private, sorted(on_private - expected - private)


def test_every_master_serves_the_same_certificate(on, master, fleet):
    fingerprint = f"openssl x509 -noout -fingerprint -sha256 -in {HAPROXY_CERTIFICATE}"
    assert on(master).check_output(fingerprint) == on(fleet.master).check_output(fingerprint)


def test_the_masters_share_their_admission_counters(on, master, fleet):
    if len(fleet.masters) < 2:
        return
    peers = on(master).check_output(f"python3 -c {shlex.quote(SHOW_PEERS)}")
    for other in fleet.masters:
        if other.name != master.name:
            assert f"id={other.name}(remote,active)" in peers, peers[:2000]
            line = next(line for line in peers.splitlines() if f"id={other.name}(" in line)
            assert "last_status=ESTA" in line, line


def test_one_master_holds_the_front_door(on, fleet):
    if not fleet.front_door:
        return
    holders = [
        master.name
        for master in fleet.masters
        if on(master).check_output(f"ip -4 -o addr show to {fleet.front_door}")
    ]
    assert len(holders) == 1, f"the front door {fleet.front_door} is on {holders or 'no master'}"
    for master in fleet.masters:
        keepalived = on(master).service("keepalived")
        assert keepalived.is_running and keepalived.is_enabled, master.name


def test_the_certificate_sync_is_confined(on, master, fleet, exposure):
    """It parses what other masters send: root with no capability, a read-only system but
    for HAProxy's certificate, and the network only to the other masters (it was exposure 9.0)."""
    if len(fleet.masters) < 2:
        pytest.skip("one master: no certificate sync")
    host = on(master)
    assert exposure(host, f"{CERTIFICATE_SYNC_UNIT}.service")
