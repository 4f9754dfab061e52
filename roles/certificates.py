"""Certificates on the master: a pinned certbot in its own virtualenv, through HAProxy's :80.

The same certbot runs on Debian 12 and 13: their packages (2.1 and 4.0) lack ACME Renewal
Information (ARI, certbot 4.1+), which Let's Encrypt recommends for deciding when to renew,
and Debian 12's lacks ACME profiles (4.0+). Its wheels are shipped from the control machine for
the host's own Python, like the service's, so the master needs no PyPI access.

certbot listens on 127.0.0.1 (layout.CERTBOT_PORT) only while it validates; HAProxy routes
the challenge path there. Its deploy hook hot-swaps the certificate in HAProxy. Renewal runs
from cron, on one schedule (`renewal_interval`, spread by `renewal_random_delay`).
"""

import zlib
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import Directory, File
from pyinfra.operations import apt, files, server, systemd

from roles import (
    SERVICE_RETRY,
    helper_installed,
    secret_template,
    unit_retired,
    virtualenv_from_wheels,
)
from wssfleet_control.commands import quote
from wssfleet_control.deployment import DeployRun
from wssfleet_control.facts import Lines, PythonPlatform
from wssfleet_control.hostside.layout import (
    ACME_CA_BUNDLE,
    ACME_DNS_CREDENTIALS,
    ACME_INFO_HELPER,
    ACME_ROOTS,
    ADMIN_SOCKET,
    CERT_NAME,
    CERTBOT,
    CERTBOT_HOME,
    CERTBOT_PORT,
    CERTIFICATE_METRICS_FILE,
    CERTIFICATE_METRICS_HELPER,
    CERTIFICATE_STANDBY_HELPER,
    CERTIFICATE_SYNC_HELPER,
    CERTIFICATE_SYNC_UNIT,
    DEPLOY_HOOK,
    HAPROXY_CERTIFICATE,
    HAPROXY_CERTIFICATE_DIRECTORY,
    LINEAGE,
    LIVE_CERTIFICATE,
    PROVIDED_CERTIFICATE,
    PROVIDED_RENEWAL_CRON,
    PROVIDED_RENEWAL_HELPER,
    RENEW_COMMAND,
    RENEWAL_CONFIG,
    RUNTIME_HELPER,
    TEXTFILE_DIRECTORY,
)
from wssfleet_control.inventory import Fleet
from wssfleet_control.release import requirements_id
from wssfleet_control.settings import Settings, seconds_of

# certbot and everything it imports, pinned: one tested set on every host release.
CERTBOT_VERSION = "5.8.0"
CERTBOT_REQUIREMENTS = (
    f"certbot=={CERTBOT_VERSION}",
    f"acme=={CERTBOT_VERSION}",
    # DNS-01 through any DNS server that takes RFC 2136 updates (certificate_source acme_dns).
    f"certbot-dns-rfc2136=={CERTBOT_VERSION}",
    "dnspython==2.9.2",
    "certifi==2026.10.19.post1",
    "cffi==2.1.1",
    "charset-normalizer==3.5.3",
    "configargparse==1.9.0",
    "configobj==5.0.9",
    "cryptography==50.0.2",
    "distro==1.9.0",
    "idna==3.20",
    "josepy==2.2.0",
    "parsedatetime==2.6",
    "pycparser==3.12",
    "pyopenssl==26.4.0",
    "pyrfc3339==2.1.1",
    "requests==2.34.2",
    "typing-extensions==4.16.0",
    "urllib3==2.8.0",
)
# The plugin for each DNS provider but rfc2136 (small, always there), and what it alone imports;
# a master installs only its provider's (acme_dns_provider).
DNS_PLUGIN_REQUIREMENTS = {
    "rfc2136": (),
    "cloudflare": (
        f"certbot-dns-cloudflare=={CERTBOT_VERSION}",
        "cloudflare==5.9.0",
        "annotated-types==0.8.0",
        "anyio==4.16.0",
        "h11==0.16.0",
        "httpcore==1.0.9",
        "httpx==0.29.0",
        "pydantic==2.14.4",
        "pydantic-core==2.50.5",
        "sniffio==1.3.1",
        "typing-inspection==0.4.5",
    ),
    "route53": (
        f"certbot-dns-route53=={CERTBOT_VERSION}",
        "boto3==1.44.18",
        "botocore==1.44.18",
        "jmespath==1.1.0",
        "python-dateutil==2.9.0.post0",
        "s3transfer==0.19.3",
        "six==1.17.0",
    ),
}
CRON_FILE = "/etc/cron.d/wssfleet-certbot"
# Where wssfleet 0.2 recorded its request; certificates are now judged by themselves.
REQUEST = "/etc/wssfleet/certificate-request"


@deploy("certbot")
def installed(run: DeployRun) -> None:
    """On every master, with an ACME certificate_source: the pinned certbot with its DNS
    provider's plugin. One deploy for all masters, so pyinfra installs on them at once.

    + run: the deploy (certificate_source, acme_dns_provider)
    """
    apt.packages(
        name="Ensure python3-venv and cron are installed",
        packages=["python3-venv", "cron"],
        no_recommends=True,
    )
    # Its timer and /usr/bin/certbot would be a second, older renewer beside ours.
    apt.packages(
        name="Ensure Debian's certbot package is absent (wssfleet runs its own certbot)",
        packages=["certbot"],
        present=False,
    )
    _install_certbot(run)


@deploy("Certificates")
def apply(run: DeployRun) -> None:
    """On the first master: obtain the certificate once, then leave renewals to cron and the
    deploy hook.

    + run: the deploy (the checked inventory: domain, extra_domains, acme_* and renewal_*)
    """
    fleet = run.fleet
    settings = fleet.settings
    ca_bundle = _renewal_installed(run, earlier_masters=[])
    # Decided from the certificate on the host, not from what an earlier deploy wrote: a
    # certbot run that failed leaves the old certificate, and the next deploy asks again.
    wanted = (
        sorted(settings.domains),
        settings.acme_directory,
        settings.acme_profile,
        authenticator(settings),
    )
    # Back from a provided certificate (certificate_source): a new one, issued later than any
    # a master serves, so the deploy's sharing takes it to every master.
    was_provided = bool(host.get_fact(Directory, path=PROVIDED_CERTIFICATE))
    if _issued() != wanted or was_provided:
        environment = "".join(
            f"{name}={quote(value)} " for name, value in certbot_environment(settings, ca_bundle)
        )
        # A CA without profiles ignores the one asked for: refuse rather than get another.
        profile_check = (
            [
                f"{environment}python3 {ACME_INFO_HELPER} require-profile "
                f"{quote(settings.acme_directory)} {quote(settings.acme_profile)}"
            ]
            if settings.acme_profile
            else []
        )
        server.shell(
            name="Ensure a certificate for the domains from the ACME server is issued",
            commands=[*profile_check, environment + _certonly(fleet)],
        )
    files.directory(
        name="Ensure no provided certificate is kept (ACME issues it)",
        path=PROVIDED_CERTIFICATE,
        present=False,
    )
    files.file(name="Ensure the old request record is gone", path=REQUEST, present=False)
    if not host.get_fact(File, path=CERTIFICATE_METRICS_FILE):
        # Certificates from before the metrics existed (the hook writes them from now on).
        server.shell(
            name="Ensure the certificate's metrics are written",
            commands=[f"python3 {CERTIFICATE_METRICS_HELPER} refresh"],
        )


@deploy("Standby renewal")
def standby(run: DeployRun) -> None:
    """On every other master: certbot and the renewal script, which renews here only while
    every master before this one is unreachable (hostside/certificate_standby.py), so a
    renewal needs any one master up, not the first.

    + run: the deploy (the masters, domain, extra_domains, acme_* and renewal_*)
    """
    masters = [master.name for master in run.fleet.masters]
    earlier = run.fleet.masters[: masters.index(host.name)]
    _renewal_installed(run, earlier_masters=[master.address for master in earlier])


def _renewal_installed(run: DeployRun, earlier_masters: list[str]) -> str:
    """certbot, the helpers, the renewal script and its cron job; returns the CA bundle
    certbot trusts for the ACME server ("" for the system's). ``earlier_masters``: the
    addresses of the masters before this one (none on the first, which always renews)."""
    fleet = run.fleet
    settings = fleet.settings
    files.file(
        name="Ensure cron swaps in no private CA certificate (ACME renews here)",
        path=PROVIDED_RENEWAL_CRON,
        present=False,
    )
    if settings.acme_ca_bundle:
        files.put(
            name="Ensure certbot trusts the ACME server's CA",
            src=settings.acme_ca_bundle,
            dest=ACME_CA_BUNDLE,
            mode="644",
        )
    ca_bundle = ACME_CA_BUNDLE if settings.acme_ca_bundle else ""
    _dns_credentials(run)
    # certificate_metrics.py writes the certificate's metrics for node_exporter.
    helper_installed("certificate_metrics.py")
    helper_installed("acme_info.py")
    if earlier_masters:
        # Beside certificate_sync.py, which it uses (the sync role installs it on every master).
        helper_installed("certificate_standby.py")
    files.template(
        name="Ensure the HAProxy deploy hook is installed",
        src=run.template("certificates", "haproxy-deploy-hook.j2"),
        dest=DEPLOY_HOOK,
        mode="755",
        runtime=RUNTIME_HELPER,
        lineage=LINEAGE,
        metrics=CERTIFICATE_METRICS_HELPER,
    )
    files.template(
        name="Ensure the renewal script is installed",
        src=run.template("certificates", "wssfleet-renew.j2"),
        dest=RENEW_COMMAND,
        mode="755",
        environment=certbot_environment(settings, ca_bundle),
        cert_name=CERT_NAME,
        certbot=CERTBOT,
        metrics=CERTIFICATE_METRICS_HELPER,
        random_delay=int(seconds_of(settings.renewal_random_delay)),
        challenge=challenge_options(fleet),
        # Several masters share the key: a renewal keeps it (certificate_sync.py checks it).
        reuse_key=len(fleet.masters) > 1,
        standby=CERTIFICATE_STANDBY_HELPER if earlier_masters else "",
        earlier_masters=earlier_masters,
        domain=settings.domain,
        names=",".join(f"DNS:{name}" for name in settings.domains),
        account=_account(settings),
        acme_directory=settings.acme_directory,
        profile=settings.acme_profile,
        haproxy_certificate=HAPROXY_CERTIFICATE,
        runtime=RUNTIME_HELPER,
        quote=quote,
    )
    _cron_job(
        run,
        f"Ensure cron checks for renewal every {settings.renewal_interval}",
        "cron.j2",
        CRON_FILE,
        renew=RENEW_COMMAND,
        random_delay=settings.renewal_random_delay,
    )
    return ca_bundle


@deploy("Provided certificate")
def provided(run: DeployRun) -> None:
    """On every master, with certificate_source files or private_ca: the certificate the
    control machine checked (wssfleet_control/site_certificate.py) in place and served,
    swapped into the running HAProxy without a reload; no ACME renewal runs beside it.

    + run: the deploy (its site_certificate)
    """
    material = run.site_certificate
    chain, key = _lineage_installed(
        run,
        PROVIDED_CERTIFICATE,
        material.chain,
        material.key,
        f"the certificate from {material.origin}",
    )
    served = host.get_fact(
        Lines,
        command=f"openssl x509 -noout -fingerprint -sha256 -in {HAPROXY_CERTIFICATE} "
        "2>/dev/null | cut -d= -f2",
    )
    if chain.will_change or key.will_change or "".join(served) != material.fingerprint:
        server.shell(
            name="Ensure HAProxy serves the provided certificate (swapped in, no reload)",
            commands=[f"python3 {RUNTIME_HELPER} install-cert {PROVIDED_CERTIFICATE}"],
        )
    _successor_installed(run)
    # An ACME renewal here would replace it.
    files.file(name="Ensure cron runs no ACME renewal here", path=CRON_FILE, present=False)
    unit_retired(f"{CERTIFICATE_SYNC_UNIT}.timer", "every master gets the same certificate")
    files.file(
        name="Ensure no ACME renewal figures are left",
        path=CERTIFICATE_METRICS_FILE,
        present=False,
    )


def _lineage_installed(run: DeployRun, directory: str, chain: str, key: str, what: str):
    """``chain`` and ``key`` (PEM) as certbot lays out a lineage, which the runtime helper's
    install-cert reads: ``directory``/fullchain.pem and privkey.pem, root's alone. Returns the
    two operations."""
    files.directory(
        name=f"Ensure the directory of {what} is root's alone",
        path=directory,
        user="root",
        group="root",
        mode="700",
    )
    chain_put = files.put(
        name=f"Ensure {what} is in place",
        src=StringIO(chain),
        dest=f"{directory}/fullchain.pem",
        mode="644",
    )
    key_put = secret_template(
        name=f"Ensure the private key of {what} is in place",
        src=run.template("internal_tls", "key.pem.j2"),
        dest=f"{directory}/privkey.pem",
        user="root",
        group="root",
        mode="600",
        key=key,
    )
    return chain_put, key_put


def _successor_installed(run: DeployRun) -> None:
    """With the private CA: its next certificate beside the current one, and the cron job
    that swaps it in when it becomes valid (hostside/provided_renewal.py)."""
    material = run.site_certificate
    successor = f"{PROVIDED_CERTIFICATE}/next"
    if not material.next_chain:
        files.directory(
            name="Ensure no next certificate is kept (none comes with these)",
            path=successor,
            present=False,
        )
        files.file(
            name="Ensure cron swaps in no next certificate",
            path=PROVIDED_RENEWAL_CRON,
            present=False,
        )
        return
    _lineage_installed(
        run, successor, material.next_chain, material.next_key, "the private CA's next certificate"
    )
    helper_installed("provided_renewal.py")
    apt.packages(name="Ensure cron is installed", packages=["cron"], no_recommends=True)
    _cron_job(
        run,
        f"Ensure cron looks every {run.fleet.settings.renewal_interval} whether it is due",
        "provided-renewal-cron.j2",
        PROVIDED_RENEWAL_CRON,
        helper=PROVIDED_RENEWAL_HELPER,
    )


def _cron_job(run: DeployRun, name: str, template: str, dest: str, **variables) -> None:
    """One of the role's cron files, on the renewal_interval schedule, and cron running."""
    settings = run.fleet.settings
    files.template(
        name=name,
        src=run.template("certificates", template),
        dest=dest,
        mode="644",
        schedule=cron_schedule(settings),
        interval=settings.renewal_interval,
        **variables,
    )
    systemd.service(
        **SERVICE_RETRY,
        name="Ensure cron is running",
        service="cron.service",
        running=True,
        enabled=True,
    )


@deploy("Certificate sync")
def sync(run: DeployRun) -> None:
    """With several masters, on each: a timer that serves a certificate another master
    renewed, once it checks (hostside/certificate_sync.py). The first master renews with
    --reuse-key, so the key every master got at the first deploy stays theirs.

    + run: the deploy: the masters, domain and acme_root_bundle
    """
    fleet = run.fleet
    settings = fleet.settings
    helper_installed("certificate_sync.py")
    if settings.acme_root_bundle:
        files.put(
            name="Ensure the ACME server's roots are here to check other masters' certificates",
            src=settings.acme_root_bundle,
            dest=ACME_ROOTS,
            mode="644",
        )
    else:
        files.file(name="Ensure no private ACME roots are trusted", path=ACME_ROOTS, present=False)
    peers = [master.address for master in fleet.masters if master.name != host.name]
    service = files.template(
        name="Ensure the certificate sync's unit is current",
        src=run.template("certificates", "certificate-sync.service.j2"),
        dest=f"/etc/systemd/system/{CERTIFICATE_SYNC_UNIT}.service",
        mode="644",
        helper=CERTIFICATE_SYNC_HELPER,
        domain=quote(settings.domain),
        peers=peers,
        certificate_directory=HAPROXY_CERTIFICATE_DIRECTORY,
        admin_socket_directory=ADMIN_SOCKET.rsplit("/", 1)[0],
        textfile_directory=TEXTFILE_DIRECTORY,
    )
    timer = files.template(
        name="Ensure the certificate sync's timer is current",
        src=run.template("certificates", "certificate-sync.timer.j2"),
        dest=f"/etc/systemd/system/{CERTIFICATE_SYNC_UNIT}.timer",
        mode="644",
    )
    systemd.service(
        **SERVICE_RETRY,
        name="Ensure the certificate sync runs every 30 s",
        service=f"{CERTIFICATE_SYNC_UNIT}.timer",
        running=True,
        enabled=True,
        daemon_reload=service.will_change or timer.will_change,
    )


def cron_schedule(settings: Settings) -> str:
    """The cron fields for `renewal_interval` (minutes dividing an hour, hours dividing a day)."""
    minutes = int(seconds_of(settings.renewal_interval)) // 60
    if minutes < 60:
        return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"
    # A fixed minute per domain: stable across deploys, spread across deployments.
    minute = zlib.crc32(settings.domain.encode()) % 60
    return f"{minute} */{minutes // 60} * * *"


def _dns_credentials(run: DeployRun) -> None:
    """The DNS provider's credentials for certbot where it reads them (acme_dns), root's
    alone; every other provider's gone, so a switch leaves no token behind."""
    settings = run.fleet.settings
    provider = settings.dns_provider
    what, variables = "", {}
    if provider == "rfc2136":
        what, variables = (
            "the TSIG key",
            {
                "server": settings.acme_dns_server,
                "port": settings.acme_dns_port,
                "key_name": settings.acme_dns_tsig_key,
                "secret": run.secrets["acme_dns_tsig_secret"],
                "algorithm": settings.acme_dns_tsig_algorithm,
            },
        )
    elif provider == "cloudflare":
        what, variables = "the API token", {"token": run.secrets["acme_dns_cloudflare_api_token"]}
    elif provider == "route53" and settings.acme_dns_route53_access_key_id:
        what, variables = (
            "the IAM user's key",
            {
                "key_id": settings.acme_dns_route53_access_key_id,
                "secret": run.secrets["acme_dns_route53_secret_access_key"],
            },
        )
    if what:
        secret_template(
            name=f"Ensure certbot's {provider} credentials ({what}) are in place",
            src=run.template("certificates", f"acme-dns-{provider}.ini.j2"),
            dest=ACME_DNS_CREDENTIALS[provider],
            user="root",
            group="root",
            mode="600",
            **variables,
        )
    # route53 without a key uses the master's own role: no file.
    keyless = provider == "route53" and not settings.acme_dns_route53_access_key_id
    for other, path in ACME_DNS_CREDENTIALS.items():
        if other != provider or keyless:
            files.file(
                name=f"Ensure no {other} DNS credentials are kept (not this fleet's provider)",
                path=path,
                present=False,
            )


def certbot_requirements(settings: Settings) -> tuple[str, ...]:
    """certbot's pins with its DNS provider's plugin (acme_dns_provider), if it needs one."""
    provider = settings.dns_provider
    return CERTBOT_REQUIREMENTS + DNS_PLUGIN_REQUIREMENTS.get(provider, ())


def _install_certbot(run: DeployRun) -> None:
    """The pinned certbot's virtualenv, unless a complete install is there (a marker decides).
    Its directory is named by its requirements: another provider's plugin is another one."""
    requirements = certbot_requirements(run.fleet.settings)
    plugins = [r for r in requirements if r.startswith("certbot-dns-")]
    directory = f"{CERTBOT_HOME}/{requirements_id(requirements)}"
    virtualenv_from_wheels(
        f"certbot {CERTBOT_VERSION} in its own virtualenv",
        directory,
        lambda: run.tool_wheelhouse(requirements, *host.get_fact(PythonPlatform)),
        # certbot and its plugins; the pins above hold everything they import.
        (f"certbot=={CERTBOT_VERSION}", *plugins),
        run.dry,
    )
    files.link(
        name=f"Ensure {CERTBOT} is certbot {CERTBOT_VERSION}",
        path=CERTBOT,
        target=f"{directory}/venv/bin/certbot",
        # An operator's or an old installer's file in its place is replaced.
        force=True,
    )
    installed = host.get_fact(Lines, command=f"ls -1 {CERTBOT_HOME}")
    for name in installed:
        if f"{CERTBOT_HOME}/{name}" != directory:
            files.directory(
                name=f"Ensure the replaced certbot {name} is removed",
                path=f"{CERTBOT_HOME}/{name}",
                present=False,
            )


def _issued() -> tuple[list[str], str, str, str] | None:
    """The names on the live certificate, the ACME server it came from, the profile asked
    for and how certbot proves the names (its authenticator), if there is a certificate."""
    names = host.get_fact(
        Lines,
        command=f"openssl x509 -in {LIVE_CERTIFICATE} -noout -ext subjectAltName 2>/dev/null "
        "| tr ',' '\\n' | sed -n 's/.*DNS://p'",
    )
    if not names:
        return None
    issuer = host.get_fact(Lines, command=f"sed -n 's/^server = //p' {RENEWAL_CONFIG}")
    profile = host.get_fact(Lines, command=f"sed -n 's/^required_profile = //p' {RENEWAL_CONFIG}")
    authenticator = host.get_fact(
        Lines, command=f"sed -n 's/^authenticator = //p' {RENEWAL_CONFIG}"
    )
    return (
        sorted(name.strip() for name in names),
        "".join(issuer).strip(),
        "".join(profile).strip(),
        "".join(authenticator).strip(),
    )


def challenge_address(fleet: Fleet) -> str:
    """Where certbot listens while it validates: loopback with one master; with several, this
    master's private address: every master's HAProxy passes challenges to the masters' in
    turn, and only the one renewing listens."""
    return fleet.node(host.name).address if len(fleet.masters) > 1 else "127.0.0.1"


def _account(settings: Settings) -> str:
    """certbot's options for the ACME account it registers."""
    if settings.acme_email:
        return f"-m {quote(settings.acme_email)}"
    return "--register-unsafely-without-email"


def _certonly(fleet: Fleet) -> str:
    settings = fleet.settings
    account = _account(settings)
    domains = " ".join(f"-d {quote(name)}" for name in settings.domains)
    profile = f"--required-profile {quote(settings.acme_profile)} " if settings.acme_profile else ""
    return (
        f"{CERTBOT} certonly --non-interactive --agree-tos --no-eff-email {account} "
        f"--cert-name {CERT_NAME} {domains} --server {quote(settings.acme_directory)} {profile}"
        "--key-type ecdsa --elliptic-curve secp256r1 --force-renewal "
        # Several masters share the key (the deploy copies it): renewals keep it.
        + ("--reuse-key " if len(fleet.masters) > 1 else "")
        + f"{challenge_options(fleet)} --deploy-hook {DEPLOY_HOOK}"
    )


def authenticator(settings: Settings) -> str:
    """certbot's authenticator, as its renewal config records it: standalone for HTTP-01,
    the DNS provider's plugin for DNS-01."""
    if settings.certificate_source == "acme_dns":
        return f"dns-{settings.acme_dns_provider}"
    return "standalone"


def certbot_environment(settings: Settings, ca_bundle: str) -> list[tuple[str, str]]:
    """What certbot's process needs in its environment, the same for the deploy's request and
    cron's renewals: the ACME server's private CA, and where the Cloudflare or AWS SDK finds
    its API and (route53) its credentials file."""
    environment = [("REQUESTS_CA_BUNDLE", ca_bundle)] if ca_bundle else []
    provider = settings.dns_provider
    if provider == "cloudflare" and settings.acme_dns_api_url:
        environment.append(("CLOUDFLARE_BASE_URL", settings.acme_dns_api_url))
    if provider == "route53":
        if settings.acme_dns_route53_access_key_id:
            environment.append(("AWS_SHARED_CREDENTIALS_FILE", ACME_DNS_CREDENTIALS[provider]))
        # root's own ~/.aws/config (another tool's profile or region) stays out of it. Route 53
        # is global; its API is signed for us-east-1 (botocore needs a region named with
        # another endpoint).
        environment += [("AWS_CONFIG_FILE", "/dev/null"), ("AWS_DEFAULT_REGION", "us-east-1")]
        if settings.acme_dns_api_url:
            environment.append(("AWS_ENDPOINT_URL_ROUTE_53", settings.acme_dns_api_url))
    return environment


def challenge_options(fleet: Fleet) -> str:
    """How certbot proves the names: HTTP-01 through HAProxy's port 80 (its listener where
    HAProxy passes the challenges), or DNS-01 through the DNS provider's plugin."""
    settings = fleet.settings
    if settings.certificate_source == "acme_dns":
        provider = settings.acme_dns_provider
        plugin = f"dns-{provider}"
        if provider == "route53":
            # It waits until Route 53 says the change is in sync: no fixed wait to give.
            return f"--authenticator {plugin}"
        return (
            f"--authenticator {plugin} --{plugin}-credentials {ACME_DNS_CREDENTIALS[provider]} "
            f"--{plugin}-propagation-seconds {settings.acme_dns_propagation_seconds}"
        )
    return (
        f"--standalone --http-01-address {challenge_address(fleet)} --http-01-port {CERTBOT_PORT}"
    )
