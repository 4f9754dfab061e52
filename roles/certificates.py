"""Certificates on the master: certbot (Debian's package) through HAProxy's :80.

certbot listens on 127.0.0.1:8888 only while it validates; HAProxy routes the challenge
path there. Its deploy hook hot-swaps the certificate in HAProxy. Renewal runs from cron,
so Debian's certbot.timer is disabled: renewals happen once, on one schedule.
"""

import zlib

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server, systemd

from roles import HELPERS, HOSTSIDE, template
from roles.haproxy import RUNTIME
from roles.monitoring import TEXTFILE_DIRECTORY
from wssfleet_control.inventory import Fleet
from wssfleet_control.run import quote

CERT_NAME = "wssfleet"
LINEAGE = f"/etc/letsencrypt/live/{CERT_NAME}"
HOOK = "/usr/local/lib/wssfleet/haproxy-deploy-hook"
RENEW = "/usr/local/sbin/wssfleet-renew"
CA_BUNDLE = "/etc/wssfleet/acme-ca.pem"
# Writes the certificate's metrics for node_exporter (wssfleet_control/hostside/).
METRICS = f"{HELPERS}/certificate_metrics.py"
METRICS_FILE = f"{TEXTFILE_DIRECTORY}/wssfleet_certificate.prom"
# Where wssfleet 0.2 recorded its request; certificates are now judged by themselves.
REQUEST = "/etc/wssfleet/certificate-request"


@deploy("Certificates")
def apply(fleet: Fleet) -> None:
    """Obtain the certificate once, then leave renewals to cron and the deploy hook.

    + fleet: the checked inventory (domain, extra_domains, acme_* settings)
    """
    settings = fleet.settings
    apt.packages(
        name="Ensure certbot and cron are installed",
        packages=["certbot", "cron"],
        no_recommends=True,
    )
    systemd.service(
        name="Ensure Debian's certbot.timer is off (cron renews)",
        service="certbot.timer",
        running=False,
        enabled=False,
    )
    if settings.acme_ca_bundle:
        files.put(
            name="Ensure certbot trusts the ACME server's CA",
            src=settings.acme_ca_bundle,
            dest=CA_BUNDLE,
            mode="644",
        )
    ca_bundle = CA_BUNDLE if settings.acme_ca_bundle else ""
    files.put(
        name="Ensure the certificate metrics writer is installed",
        src=str(HOSTSIDE / "certificate_metrics.py"),
        dest=METRICS,
        mode="755",
    )
    files.template(
        name="Ensure the HAProxy deploy hook is installed",
        src=template("certificates", "haproxy-deploy-hook.j2"),
        dest=HOOK,
        mode="755",
        runtime=RUNTIME,
        lineage=LINEAGE,
        metrics=METRICS,
    )
    files.template(
        name="Ensure the renewal script is installed",
        src=template("certificates", "wssfleet-renew.j2"),
        dest=RENEW,
        mode="755",
        ca_bundle=ca_bundle,
        cert_name=CERT_NAME,
        metrics=METRICS,
    )
    files.template(
        name="Ensure cron renews certificates twice a day",
        src=template("certificates", "cron.j2"),
        dest="/etc/cron.d/wssfleet-certbot",
        mode="644",
        # A fixed minute per domain: stable across deploys, spread across deployments.
        minute=zlib.crc32(settings.domain.encode()) % 60,
    )
    systemd.service(
        name="Ensure cron is running", service="cron.service", running=True, enabled=True
    )
    # Decided from the certificate on the host, not from what an earlier deploy wrote: a
    # certbot run that failed leaves the old certificate, and the next deploy asks again.
    wanted = (sorted(fleet.settings.domains), fleet.settings.acme_directory)
    if _issued() != wanted:
        server.shell(
            name="Ensure a certificate for the domains from the ACME server is issued",
            commands=[_certonly(fleet, ca_bundle)],
        )
    files.file(name="Ensure the old request record is gone", path=REQUEST, present=False)
    if not host.get_fact(File, path=METRICS_FILE):
        # Certificates from before the metrics existed (the hook writes them from now on).
        server.shell(
            name="Ensure the certificate's metrics are written",
            commands=[f"python3 {METRICS} refresh"],
        )


def _issued() -> tuple[list[str], str] | None:
    """The names on the live certificate and the ACME server it came from, if there is one."""
    names = host.get_fact(
        Command,
        f"openssl x509 -in {LINEAGE}/cert.pem -noout -ext subjectAltName 2>/dev/null "
        "| tr ',' '\\n' | sed -n 's/.*DNS://p' || true",
    )
    if not names:
        return None
    issuer = host.get_fact(
        Command, f"sed -n 's/^server = //p' /etc/letsencrypt/renewal/{CERT_NAME}.conf || true"
    )
    return sorted(names.split()), (issuer or "").strip()


def _certonly(fleet: Fleet, ca_bundle: str) -> str:
    settings = fleet.settings
    account = (
        f"-m {quote(settings.acme_email)}"
        if settings.acme_email
        else "--register-unsafely-without-email"
    )
    domains = " ".join(f"-d {quote(name)}" for name in settings.domains)
    environment = f"REQUESTS_CA_BUNDLE={quote(ca_bundle)} " if ca_bundle else ""
    return (
        f"{environment}certbot certonly --non-interactive --agree-tos --no-eff-email {account} "
        f"--cert-name {CERT_NAME} {domains} --server {quote(settings.acme_directory)} "
        "--key-type ecdsa --elliptic-curve secp256r1 --force-renewal "
        "--standalone --http-01-address 127.0.0.1 --http-01-port 8888 "
        f"--deploy-hook {HOOK}"
    )
