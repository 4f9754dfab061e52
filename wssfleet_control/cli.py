"""wssfleet: deploy, plan, verify and operate a WebSocket fleet. Every Make target calls this.

Each command takes the inventory with -i; without it, $WSSFLEET_INVENTORY, else the
`inventory` named in wssfleet.toml at the checkout's root, else the lab's. Only `deploy`
builds the lab; any other command on the lab's inventory says so when the lab is not up.
`deploy` and `plan` print what changed (or would), on which host; with --json they print it
as one JSON document.

Exit codes: 0 done (status: nothing needs attention); 1 a command failed, or status found a
problem; 2 the command line is wrong; 3 the inventory or its settings are invalid (no host
was touched).
"""

# pyinfra's API needs the standard library patched for gevent before anything else loads it.
from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import click  # noqa: E402

from wssfleet_control import checkout, secret_records  # noqa: E402
from wssfleet_control.checkout import (  # noqa: E402
    BUILD,
    LAB_INVENTORY,
    PROJECT_FILE,
    REPO,
    TEMPLATES,
)
from wssfleet_control.deployment import DeployError, DeployRun  # noqa: E402
from wssfleet_control.fleet_lock import FleetLock  # noqa: E402
from wssfleet_control.hostside.layout import BUILTIN_APP  # noqa: E402
from wssfleet_control.settings import (  # noqa: E402
    SettingsError,
    app_markdown_table,
    markdown_table,
)


def default_inventory() -> str:
    """The deployment named once for the checkout (wssfleet.toml), else the lab's."""
    if PROJECT_FILE.is_file():
        import tomllib

        try:
            named = tomllib.loads(PROJECT_FILE.read_text()).get("inventory")
        except tomllib.TOMLDecodeError as error:
            raise InvalidSettings(f"{PROJECT_FILE.name}: {error}") from None
        if not isinstance(named, str) or not named:
            raise InvalidSettings(
                f"{PROJECT_FILE.name}: give the deployment's inventory as "
                'inventory = "inventory/production.py"'
            )
        return named
    return str(LAB_INVENTORY.relative_to(REPO))


def _resolve_inventory(_context, _parameter, value: str | None) -> str:
    return value or default_inventory()


def make_inventory_option(callback):
    return click.option(
        "-i",
        "--inventory",
        "inventory_path",
        envvar="WSSFLEET_INVENTORY",
        callback=callback,
        help="the pyinfra inventory of the deployment [default: $WSSFLEET_INVENTORY, else "
        "wssfleet.toml's inventory, else inventory/lab.py]",
    )


inventory_option = make_inventory_option(_resolve_inventory)
json_option = click.option("--json", "as_json", is_flag=True, help="print one JSON document")
REPLACE_SECRETS = click.option(
    "--replace-secrets",
    is_flag=True,
    help="give the hosts this machine's secrets even where they run with others (new token "
    "signing key and Redis passwords: every token minted with the old key fails)",
)


class Failure(click.ClickException):
    """A command failed; its message says what and where. Exit code 1."""

    exit_code = 1


class InvalidSettings(click.ClickException):
    """The inventory or its settings are invalid: nothing was touched. Exit code 3."""

    exit_code = 3


def is_lab(inventory_path: str) -> bool:
    return Path(inventory_path).resolve() == LAB_INVENTORY


def ensure_lab(inventory_path: str) -> None:
    """Build the lab when the inventory is the lab's (only `deploy` and `lab up` do)."""
    if is_lab(inventory_path):
        from lab import core
        from lab.config import LabError

        try:
            core.up()
        except LabError as error:
            raise Failure(f"lab: {error}") from None


def require_lab(inventory_path: str) -> None:
    """A command about a deployment never builds the lab: when the inventory is the lab's
    and the lab is not up, say so (a forgotten -i must not start hosts on this machine)."""
    if is_lab(inventory_path):
        from lab import core
        from lab.config import LabSettings

        if not core.is_up(core.load_state(), LabSettings.from_environment()):
            raise Failure(
                f"the inventory is the lab's ({inventory_path}) and the lab is not up: "
                "'make deploy' builds and deploys it; for your own deployment give -i, "
                "WSSFLEET_INVENTORY or wssfleet.toml"
            )


def load_fleet(inventory_path: str):
    """The checked inventory; an invalid one stops the command with exit code 3."""
    from wssfleet_control import inventory

    if not Path(inventory_path).is_file():
        raise InvalidSettings(f"inventory {inventory_path} does not exist")
    try:
        return inventory.load(inventory_path)
    except SettingsError as error:
        raise InvalidSettings(f"{inventory_path}: {error}") from None


def open_session(inventory_path: str, quiet: bool = False, diff: bool = False):
    from wssfleet_control.engine import Session

    if not Path(inventory_path).is_file():
        raise InvalidSettings(f"inventory {inventory_path} does not exist")
    try:
        return Session(inventory_path, quiet=quiet, diff=diff)
    except SettingsError as error:
        raise InvalidSettings(f"{inventory_path}: {error}") from None


def secrets_of(session, create: bool) -> dict[str, str]:
    """The deployment's secrets; a vault that cannot be read (secrets_command) is a failure
    said in one line, before any host is touched."""
    from wssfleet_control.secrets import SecretsError

    try:
        return session.fleet.secrets(create=create)
    except SecretsError as error:
        raise Failure(str(error)) from None


def _dns_provider_secret_missing(settings, stored: dict[str, str]) -> str:
    """What is wrong with the secret the DNS-01 provider needs (secrets.GIVEN_BY_PROVIDER),
    or ""; a secret only the operator can give, so the deploy cannot make it."""
    from wssfleet_control.secrets import ENVIRONMENT_PREFIX, GIVEN_BY_PROVIDER

    provider = settings.dns_provider
    if not provider:
        return ""
    name, what = GIVEN_BY_PROVIDER[provider]
    uses_secret = provider != "route53" or settings.acme_dns_route53_access_key_id
    if not uses_secret:
        if stored.get(name):
            return (
                f"the secret {name} is given, but acme_dns_route53_access_key_id is not: set "
                "the access key it belongs to, or remove the secret to use the master's own role"
            )
        return ""
    if stored.get(name):
        return ""
    return (
        f"acme_dns_provider={provider!r} needs the secret {name} ({what}): put it in the "
        f"secrets file, give it from secrets_command, or set {ENVIRONMENT_PREFIX}{name.upper()}"
    )


def site_certificate_of(fleet, stored: dict[str, str]):
    """What the masters serve when no ACME server issues it (site_certificate.py), checked
    on this machine; a fault in it is a setting's, said before any host is touched."""
    from wssfleet_control import site_certificate

    source = fleet.settings.certificate_source
    if missing := _dns_provider_secret_missing(fleet.settings, stored):
        raise InvalidSettings(f"{fleet.inventory_path}: {missing}")
    try:
        if source == site_certificate.PRIVATE_CA:
            site_certificate.check_private_ca(stored, fleet.settings.domains)
        return site_certificate.material(fleet.settings, fleet.inventory_path, stored)
    except site_certificate.CertificateError as error:
        raise InvalidSettings(f"{fleet.inventory_path}: {error}") from None


def _version() -> str:
    from importlib.metadata import version

    return version("wssfleet-control")


@click.group(help=__doc__)
@click.version_option(_version(), prog_name="wssfleet")
def main() -> None:
    if not checkout.is_checkout():
        raise Failure(checkout.NOT_A_CHECKOUT)


@main.command()
@inventory_option
@json_option
@click.option(
    "--templates",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="render customised templates from this directory (same layout as templates/)",
)
@REPLACE_SECRETS
def deploy(
    inventory_path: str,
    as_json: bool,
    templates: Path | None,
    replace_secrets: bool = False,
    holding: FleetLock | None = None,
) -> None:
    """Converge every host, then roll instances onto the release one at a time."""
    from wssfleet_control import certificate_sharing, rollout

    ensure_lab(inventory_path)
    session = open_session(inventory_path, quiet=as_json)
    started = time.monotonic()
    report: dict[str, Any] = {"inventory": inventory_path}
    # rotate-secret holds the lock already (and records the run itself).
    lock = holding or FleetLock(session, "deploy")
    errors: list[str] = []
    # A vault that does not answer, or a certificate file that will not do, stops it here.
    certificate = site_certificate_of(session.fleet, secrets_of(session, create=False))
    try:
        session.connect()  # every host: a deploy without one would be half done
        # Read-only, before the lock: a refused deploy leaves no trace on the hosts.
        if not replace_secrets:
            secret_records.refuse_a_fork(session)
        if holding is None:
            lock.acquire()
        stored = secrets_of(session, create=True)
        if session.fleet.settings.certificate_source == "private_ca":
            certificate = site_certificate_of(session.fleet, stored)
        run = DeployRun(
            fleet=session.fleet,
            secrets=stored,
            dry=False,
            templates=templates or TEMPLATES,
            site_certificate=certificate,
        )
        report["release"] = run.release
        run.build_apps(_say)
        report |= session.converge(run)
        errors = _failures(report)
        # A provided certificate (files, private_ca) reached every master in the converge.
        if not errors and session.fleet.settings.acme and len(session.fleet.masters) > 1:
            shared = certificate_sharing.share(session)
            report["certificates"] = shared
            for master, outcome in shared.items():
                _say(f"--> Certificate on {master}:", outcome)
        if not errors:
            _say("--> Rolling instances onto release", run.release)
            try:
                steps = rollout.roll(
                    session,
                    run.releases(),
                    on_step=_print_step(),
                    on_start=_print_start(session),
                )
                report["rollout"] = {"status": "done", "steps": rollout.as_data(steps)}
            except rollout.RolloutError as error:
                steps = getattr(error, "steps", [])
                report["rollout"] = {
                    "status": "stopped",
                    "steps": rollout.as_data(steps),
                    "error": str(error),
                }
                errors.append(str(error))
        if not errors:
            try:
                rollout.wait_in_rotation(session)
            except rollout.RolloutError as error:
                errors.append(str(error))
    except DeployError as error:
        errors = [str(error)]
    finally:
        if holding is None:
            lock.finish(_outcome(errors), report.get("release", ""))
        else:
            holding.deployed_release = report.get("release", "")
        session.close()
    report["seconds"] = round(time.monotonic() - started, 1)
    report["ok"] = not errors
    report["errors"] = errors
    _finish(report, as_json)
    if not as_json and not errors:
        _summary(session.fleet, inventory_path)


@main.command()
@inventory_option
@json_option
@click.option(
    "--to",
    "to_release",
    metavar="RELEASE",
    help="this release instead of the one before (one of the three each worker keeps)",
)
@click.option(
    "--app",
    "app",
    metavar="NAME",
    default=BUILTIN_APP,
    show_default=True,
    help="whose instances: an app's (settings: apps), or the built-in service's",
)
def rollback(inventory_path: str, as_json: bool, to_release: str | None, app: str) -> None:
    """Roll every instance back onto the release it ran before (or --to another kept one),
    with the same drain."""
    from wssfleet_control import rollout

    require_lab(inventory_path)
    started = time.monotonic()
    report: dict[str, Any] = {"inventory": inventory_path}
    with open_session(inventory_path, quiet=as_json) as session:
        try:
            # Every host, as for a deploy: a rollback decided without one would be half done.
            session.connect()
        except DeployError as error:
            raise Failure(str(error)) from None
        if app != BUILTIN_APP and app not in session.fleet.settings.apps:
            known = ", ".join([BUILTIN_APP, *sorted(session.fleet.settings.apps)])
            raise Failure(f"--app {app}: the inventory has no such app (it has {known})")
        lock = _locked(session, "rollback" if app == BUILTIN_APP else f"rollback {app}")
        report["errors"] = ["interrupted"]
        try:
            target = (
                rollout.installed_everywhere(session, to_release, app)
                if to_release
                else rollout.previous_release(session, app)
            )
            report["release"] = target
            whose = "" if app == BUILTIN_APP else f"app {app}'s "
            _say(f"--> Rolling {whose}instances back onto release", target)
            steps = rollout.roll(
                session,
                {app: target},
                on_step=_print_step(),
                on_start=_print_start(session),
            )
            report["rollout"] = {"status": "done", "steps": rollout.as_data(steps)}
            report["errors"] = []
        except rollout.RolloutError as error:
            report["rollout"] = {
                "status": "stopped",
                "steps": rollout.as_data(getattr(error, "steps", [])),
                "error": str(error),
            }
            report["errors"] = [str(error)]
        finally:
            lock.finish(_outcome(report["errors"]), report.get("release", ""))
    report["operations"] = []
    report["seconds"] = round(time.monotonic() - started, 1)
    report["ok"] = not report["errors"]
    _finish(report, as_json)


def _worker(session, name: str):
    found = [node for node in session.fleet.workers if node.name == name]
    if not found:
        names = ", ".join(node.name for node in session.fleet.workers)
        raise click.UsageError(f"{name} is not a worker of this inventory: give one of {names}")
    return found[0]


@main.command()
@inventory_option
@click.argument("worker_name", metavar="WORKER")
def drain(inventory_path: str, worker_name: str) -> None:
    """Take WORKER out of rotation for maintenance: its clients move to the other workers
    (1012, over drain_seconds). `wssfleet ready WORKER` puts it back."""
    from wssfleet_control import rollout

    require_lab(inventory_path)
    with open_session(inventory_path, quiet=True) as session:
        worker = _worker(session, worker_name)
        seconds = session.fleet.settings.drain_seconds
        lock = _locked(session, f"drain {worker_name}")
        outcome = "interrupted"
        try:
            click.echo(f"--> Draining {worker_name}: its clients move over {seconds} s…", err=True)
            left = rollout.drain_worker(session, worker)
            outcome = "ok"
        except rollout.RolloutError as error:
            outcome = _outcome([str(error)])
            raise Failure(str(error)) from None
        finally:
            lock.finish(outcome)
    per_master = "; ".join(f"on {master}: {sessions}" for master, sessions in left.items())
    click.echo(f"{worker_name} is drained; sessions left per instance {per_master}")


@main.command()
@inventory_option
@click.argument("worker_name", metavar="WORKER")
def ready(inventory_path: str, worker_name: str) -> None:
    """Put a drained WORKER back in rotation (the rebalancer then evens out the clients)."""
    from wssfleet_control import rollout

    require_lab(inventory_path)
    with open_session(inventory_path, quiet=True) as session:
        worker = _worker(session, worker_name)
        lock = _locked(session, f"ready {worker_name}")
        outcome = "interrupted"
        try:
            rollout.ready_worker(session, worker)
            outcome = "ok"
        except rollout.RolloutError as error:
            outcome = _outcome([str(error)])
            raise Failure(str(error)) from None
        finally:
            lock.finish(outcome)
    click.echo(f"{worker_name} is back in rotation")


def _move_front_door(
    inventory_path: str, away_from: str | None, to: str | None, as_json: bool
) -> None:
    from wssfleet_control import front_door_move

    require_lab(inventory_path)
    with open_session(inventory_path, quiet=True) as session:
        lock = _locked(session, f"front-door move from {away_from or 'its holder'}")
        outcome = "interrupted"
        try:
            moved = front_door_move.move(
                session, away_from, to, say=lambda line: click.echo(line, err=True)
            )
            outcome = "ok" if not moved.sessions_left else "clients left"
        except front_door_move.MoveError as error:
            outcome = _outcome([str(error)])
            if as_json:
                click.echo(json.dumps({"ok": False, "errors": [str(error)]}, indent=2))
            raise Failure(str(error)) from None
        finally:
            lock.finish(outcome)
    left = (
        [f"{moved.away_from} still holds {moved.sessions_left} clients"]
        if moved.sessions_left
        else []
    )
    if as_json:
        click.echo(json.dumps({"ok": not left, **moved.report(), "errors": left}, indent=2))
    else:
        click.echo(moved.said())
    if left:
        raise Failure(left[0])


@main.group("front-door")
def front_door() -> None:
    """The floating front door the masters share (front_door_address)."""


@front_door.command("move")
@inventory_option
@json_option
@click.option("--to", "to", metavar="MASTER", help="the master to take it (default: another)")
def front_door_move(inventory_path: str, as_json: bool, to: str | None) -> None:
    """Hand the front door to another master on purpose, without a client noticing: the old
    holder keeps serving its connections, which then move with 1012 over drain_seconds;
    done when it holds no client."""
    _move_front_door(inventory_path, None, to, as_json)


@main.command("drain-master")
@inventory_option
@json_option
@click.argument("master_name", metavar="MASTER")
def drain_master(inventory_path: str, as_json: bool, master_name: str) -> None:
    """Before maintenance of MASTER: if it holds the front door, hand it to another master;
    move its clients (1012, over drain_seconds) and wait until it holds none."""
    _move_front_door(inventory_path, master_name, None, as_json)


@main.command()
@inventory_option
@json_option
@click.option("--diff", is_flag=True, help="show how each file would change (secrets withheld)")
@REPLACE_SECRETS
def plan(inventory_path: str, as_json: bool, diff: bool, replace_secrets: bool) -> None:
    """Dry run: what a deploy would change, on which host. Builds, downloads and writes nothing."""
    from wssfleet_control import rollout

    require_lab(inventory_path)
    session = open_session(inventory_path, quiet=as_json, diff=diff)
    stored = secrets_of(session, create=False)
    run = DeployRun(
        fleet=session.fleet,
        secrets=stored,
        dry=True,
        site_certificate=site_certificate_of(session.fleet, stored),
    )
    report: dict[str, Any] = {"inventory": inventory_path, "release": run.release}
    try:
        if not replace_secrets:
            secret_records.refuse_a_fork(session)
        report |= session.converge(run)
        report["rollout"] = {
            "status": "planned",
            "steps": rollout.as_data(rollout.pending_steps(session, run.releases())),
        }
    except (DeployError, rollout.RolloutError) as error:
        report["errors"] = [str(error)]
    finally:
        session.close()
    report.setdefault("errors", [])
    report["ok"] = not report["errors"]
    _finish(report, as_json)


@main.command()
@inventory_option
@click.argument("pytest_args", nargs=-1)
def verify(inventory_path: str, pytest_args: tuple[str, ...]) -> None:
    """The testinfra suite (tests/infra) against the inventory's hosts."""
    require_lab(inventory_path)
    fleet = load_fleet(inventory_path)
    config = _ssh_config(fleet, inventory_path)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests/infra"]
    command += [f"--inventory={inventory_path}", f"--ssh-config={config}", *pytest_args]
    sys.exit(verify_exit_code(subprocess.run(command, cwd=REPO).returncode))


def verify_exit_code(pytest_code: int) -> int:
    """pytest's exit code as wssfleet's: 0 every check passed, 1 a check failed (a problem
    found); pytest's 2 to 5 (interrupted, internal error, usage, no tests) would read as
    wssfleet's "wrong command line" or "invalid inventory": 4, the checks could not run."""
    return pytest_code if pytest_code in (0, 1) else 4


@main.command()
@inventory_option
@json_option
def status(inventory_path: str, as_json: bool) -> None:
    """Hosts, services, certificates, the front door, Redis and open connections, read live.
    Exit 1 when something needs attention (listed under "problems": a host that does not
    answer, a unit not running, a failed renewal, a firing alert that is not a warning); 4
    when no host answers (nothing could be looked at)."""
    from wssfleet_control import status as fleet_status

    require_lab(inventory_path)
    with open_session(inventory_path, quiet=True) as session:
        code = fleet_status.show(session, as_json)
    sys.exit(code)


@main.command()
@inventory_option
@json_option
def details(inventory_path: str, as_json: bool) -> None:
    """What runs where: each worker's current and kept releases; each instance's release,
    since when, whether it runs older settings than its host's, and how each master's
    HAProxy sees it. Exit 4 when no worker answers."""
    from wssfleet_control import details as fleet_details

    require_lab(inventory_path)
    with open_session(inventory_path, quiet=True) as session:
        code = fleet_details.show(session, as_json)
    sys.exit(code)


@main.command()
@inventory_option
@click.pass_context
def renew(ctx: click.Context, inventory_path: str) -> None:
    """Force a certificate renewal: through the cron job's own script (ACME), or a new
    certificate from the private CA, deployed."""
    from wssfleet_control import certificate_sharing, commands

    require_lab(inventory_path)
    with open_session(inventory_path, quiet=True) as session:
        source = session.fleet.settings.certificate_source
        if source == "files":
            raise Failure(
                "certificate_source='files': nothing here renews your certificate; put the "
                "renewed files in place, then `make deploy` checks and installs them"
            )
        if source == "private_ca":
            _renew_from_the_private_ca(ctx, session, inventory_path)
            return
        # The first master renews; while it is down, the next one that answers (its script
        # renews only while every master before it is unreachable).
        session.connect(every_host=False)
        reachable = [m.name for m in session.fleet.masters if m.name not in session.unreachable]
        if not reachable:
            raise Failure("no master answers over SSH: nothing can renew")
        master = reachable[0]
        lock = _locked(session, "renew")
        outcome = "interrupted"
        try:
            click.echo(f"--> Renewing on {master} with the cron job's own script…", err=True)
            # The very script /etc/cron.d/wssfleet-certbot runs, without its random delay.
            result = session.on(master, commands.forced_renewal(), timeout=300)
            # Every other master serves it at once (one that is down gets it at the next
            # deploy).
            shared = certificate_sharing.share(session) if result.ok else {}
            outcome = "ok" if result.ok else "failed: certbot"
        finally:
            lock.finish(outcome)
    click.echo(result.stdout + result.stderr, nl=False)
    for master, outcome in shared.items():
        click.echo(f"certificate on {master}: {outcome}")
    if not result.ok:
        raise Failure("the renewal failed (certbot's words are above)")


def _renew_from_the_private_ca(ctx: click.Context, session, inventory_path: str) -> None:
    """A new certificate from the private CA, deployed to every master (swapped in)."""
    from wssfleet_control import secrets

    fleet = session.fleet
    site_certificate_of(fleet, secrets_of(session, create=False))
    lock = _locked(session, "renew")
    outcome = "failed"
    try:
        try:
            secrets.renew_private_ca(fleet.inventory_path, fleet.settings.domains)
        except ValueError as error:
            outcome = f"refused: {error}"
            raise Failure(str(error)) from None
        _say("--> A new certificate from the private CA;", "deploying it to every master")
        ctx.invoke(
            deploy, inventory_path=inventory_path, as_json=False, templates=None, holding=lock
        )
        outcome = "ok"
    finally:
        lock.finish(outcome, lock.deployed_release)


@main.group()
def lock() -> None:
    """The fleet lock that deploy, rollback, rotate-secret, drain, ready and renew hold."""


@lock.command("status")
@inventory_option
def lock_status(inventory_path: str) -> None:
    """Who holds the fleet lock, on each master that answers."""
    from wssfleet_control import fleet_lock

    with open_session(inventory_path, quiet=True) as session:
        held = fleet_lock.holders(session)
    for master, holder in held.items():
        click.echo(f"{master}: {fleet_lock.describe_holder(holder) if holder else 'free'}")


@lock.command("release")
@inventory_option
def lock_release(inventory_path: str) -> None:
    """Remove the fleet lock a dead run left behind (whoever holds it: check with `lock
    status` that its run has ended)."""
    from wssfleet_control import fleet_lock

    with open_session(inventory_path, quiet=True) as session:
        held = fleet_lock.force_release(session)
    for master, holder in held.items():
        removed = f"removed the lock of {fleet_lock.describe_holder(holder)}"
        click.echo(f"{master}: {removed if holder else 'was free'}")


@main.command()
@inventory_option
@json_option
@click.option("-n", "lines", default=20, show_default=True, help="how many runs, newest last")
def audit(inventory_path: str, as_json: bool, lines: int) -> None:
    """The last runs that held the fleet lock: when, who, from where, which commit, the
    release, the settings' digest and the outcome."""
    from wssfleet_control import fleet_lock

    with open_session(inventory_path, quiet=True) as session:
        try:
            masters, entries = fleet_lock.audit(session, lines)
        except DeployError as error:
            raise Failure(str(error)) from None
    if as_json:
        click.echo(json.dumps({"masters": masters, "runs": entries}, indent=2))
        return
    click.echo(f"--> The last {len(entries)} runs (audit logs of {', '.join(masters)}):")
    for entry in entries:
        commit = entry.get("commit", "") + ("+local changes" if entry.get("dirty") else "")
        click.echo(
            f"    {entry.get('time', '?')}  {entry.get('who', '?')}@{entry.get('machine', '?')}"
            f"  {entry.get('command', '?')}  commit {commit or '?'}"
            f"  release {entry.get('release') or '-'}  {entry.get('outcome', '?')}"
        )


@main.command("rotate-secret")
@inventory_option
@json_option
@click.option(
    "--force",
    is_flag=True,
    help="rotate even while the previous key is still accepted (the tokens it signed stop)",
)
@click.option(
    "--revoke",
    is_flag=True,
    help="the key leaked: drop it and any previous key in the same rollout (every token they "
    "signed stops at once; clients need new tokens)",
)
@click.pass_context
def rotate_secret(
    ctx: click.Context, inventory_path: str, as_json: bool, force: bool, revoke: bool
) -> None:
    """Make a new token signing key and deploy it. Tokens signed with the old key keep working
    for token_max_ttl (their longest lifetime): the services stop accepting it then by
    themselves. --revoke drops it at once instead."""
    from wssfleet_control import secrets

    require_lab(inventory_path)
    with open_session(inventory_path, quiet=True) as session:
        overlap = session.fleet.settings.token_max_ttl
        secrets_of(session, create=False)  # a vault that does not answer: before the lock
        # Held from before the key changes until its deploy ends.
        lock = _locked(session, "rotate-secret --revoke" if revoke else "rotate-secret")
        outcome = "failed"
        try:
            try:
                # Where the fleet keeps its secrets: an inventory may name another's
                # (wssfleet_inventory), as a derived one names the file it derives from.
                secrets.rotate(
                    session.fleet.inventory_path,
                    overlap,
                    force=force,
                    revoke=revoke,
                    command=session.fleet.settings.secrets_command,
                )
            except ValueError as error:
                outcome = f"refused: {error}"
                raise click.UsageError(str(error)) from None
            if revoke:
                _say("--> New signing key; the old one is revoked", "as each instance restarts")
            else:
                _say("--> New signing key; the old one is accepted for", f"{overlap} s more")
            ctx.invoke(
                deploy, inventory_path=inventory_path, as_json=as_json, templates=None, holding=lock
            )
            outcome = "ok"
        finally:
            lock.finish(outcome, lock.deployed_release)


@main.command()
@inventory_option
@click.option("--sub", required=True, help="who the token is for")
@click.option("--ttl", default=3600, show_default=True, help="seconds until it expires")
@click.option(
    "--subscribe",
    multiple=True,
    metavar="PATTERN",
    help="a channel pattern it may subscribe to (* = any run of characters); repeatable. "
    "None given: the deployment's token_default_subscribe",
)
@click.option(
    "--publish",
    multiple=True,
    metavar="PATTERN",
    help="a channel pattern it may publish to; repeatable. None given: token_default_publish",
)
def token(
    inventory_path: str, sub: str, ttl: int, subscribe: tuple[str, ...], publish: tuple[str, ...]
) -> None:
    """Print a client token signed with the deployment's key."""
    from wssfleet import auth
    from wssfleet_control import inventory, secrets

    try:
        secret = inventory.load(inventory_path).secrets(create=False)["jwt_secret"]
        if secret == secrets.NOT_YET:
            raise ValueError(f"{inventory_path} has no signing key yet: deploy it first")
        click.echo(
            auth.mint(secret, sub, ttl, subscribe=subscribe or None, publish=publish or None)
        )
    except ValueError as error:
        raise click.UsageError(str(error)) from None


@main.command("private-ca")
@inventory_option
def private_ca(inventory_path: str) -> None:
    """Print the private CA's root certificate (certificate_source=private_ca): what clients
    trust to reach the fleet."""
    from wssfleet_control import site_certificate

    fleet = load_fleet(inventory_path)
    if fleet.settings.certificate_source != site_certificate.PRIVATE_CA:
        raise Failure(
            f"{inventory_path} has certificate_source={fleet.settings.certificate_source!r}: "
            "there is a private CA only with certificate_source='private_ca'"
        )
    root = site_certificate.ca_certificate(fleet.secrets(create=False))
    if root == site_certificate.NOT_YET:
        raise Failure(f"{inventory_path} has no private CA yet: deploy it first")
    click.echo(root, nl=False)


@main.command()
# Not resolved by the callback: an inventory given as the argument must not read (and so
# depend on) wssfleet.toml.
@make_inventory_option(None)
@click.argument("positional", metavar="[INVENTORY]", required=False)
@click.option(
    "--hosts",
    "look_at_hosts",
    is_flag=True,
    help="also look at the hosts, changing nothing: SSH with the key, root or sudo, Debian "
    "12 or 13, each domain's DNS, port 80 between the masters (exit 1 on a problem, 4 when "
    "no host answers)",
)
@json_option
def check(
    inventory_path: str | None, positional: str | None, look_at_hosts: bool, as_json: bool
) -> None:
    """Validate an inventory and its settings, touching no host (exit 3 when invalid)."""
    inventory_path = positional or inventory_path or default_inventory()
    fleet = load_fleet(inventory_path)
    if fleet.settings.certificate_source == "files":
        site_certificate_of(fleet, {})
    elif fleet.settings.certificate_source in ("private_ca", "acme_dns"):
        # The private CA's name constraints against the domains (the CA lives with the
        # secrets), or the DNS provider's secret.
        site_certificate_of(fleet, fleet.secrets(create=False))
    names = ", ".join(
        f"{node.name} ({'+'.join(fleet.roles_of(node.name))})" for node in fleet.nodes
    )
    said = f"wssfleet: {inventory_path} is valid: {names}; domains {fleet.settings.domains}"
    if not look_at_hosts:
        click.echo(said)
        return
    click.echo(said, err=True)
    from wssfleet_control import preflight

    with open_session(inventory_path, quiet=True) as session:
        code = preflight.show(session, as_json)
    sys.exit(code)


@main.command("inventory")
@inventory_option
@click.option(
    "--is-lab", "is_lab_check", is_flag=True, help="exit 0 when it is the lab's, 1 otherwise"
)
def which_inventory(inventory_path: str, is_lab_check: bool) -> None:
    """Print the inventory commands act on (from -i, $WSSFLEET_INVENTORY, wssfleet.toml,
    else the lab's)."""
    if is_lab_check:
        sys.exit(0 if is_lab(inventory_path) else 1)
    click.echo(inventory_path)


def _ssh_config(fleet, inventory_path: str) -> Path:
    """An OpenSSH config for the inventory's hosts (their ssh_* data), under build/."""
    config = BUILD / f"ssh_config.{Path(inventory_path).stem}"
    config.parent.mkdir(exist_ok=True)
    config.write_text(fleet.ssh_config())
    return config


def _hosts_named(fleet, names: tuple[str, ...]) -> list:
    """The hosts ``names`` selects (host names or roles: master, workers, redis, monitoring,
    sentinel); every host when none."""
    if not names:
        return list(fleet.nodes)
    chosen = []
    for node in fleet.nodes:
        if node.name in names or set(fleet.roles_of(node.name)) & set(names):
            chosen.append(node)
    unknown = [
        name
        for name in names
        if name not in {node.name for node in fleet.nodes}
        and not any(name in fleet.roles_of(node.name) for node in fleet.nodes)
    ]
    if unknown:
        known = ", ".join(node.name for node in fleet.nodes)
        raise click.UsageError(
            f"{', '.join(unknown)}: no such host or role; hosts: {known}; roles: master, "
            "workers, redis, monitoring, sentinel"
        )
    return chosen


@main.command(context_settings={"ignore_unknown_options": True})
@inventory_option
@click.argument("host_name", metavar="HOST")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh(inventory_path: str, host_name: str, command: tuple[str, ...]) -> None:
    """Open a shell on HOST (or run COMMAND there) with the inventory's SSH settings."""
    import os

    fleet = load_fleet(inventory_path)
    (node,) = _hosts_named(fleet, (host_name,))[:1] or (None,)
    if node is None or node.name != host_name:
        raise click.UsageError(f"{host_name} is not a host of this inventory")
    config = _ssh_config(fleet, inventory_path)
    os.execvp("ssh", ["ssh", "-F", str(config), *(() if command else ("-t",)), node.name, *command])


@main.command()
@inventory_option
@click.argument("names", nargs=-1, metavar="[HOST|ROLE]...")
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines")
@click.option("--since", default="-15min", show_default=True, help="journalctl's --since")
def logs(inventory_path: str, names: tuple[str, ...], follow: bool, since: str) -> None:
    """The journals of wssfleet's units on the chosen hosts (all by default), merged in time
    order, each line prefixed by its host."""
    import shlex
    import threading

    from wssfleet_control.status import units_of

    fleet = load_fleet(inventory_path)
    config = _ssh_config(fleet, inventory_path)
    nodes = _hosts_named(fleet, names)
    processes = {}
    for node in nodes:
        units = " ".join(f"-u {shlex.quote(unit)}" for unit in units_of(fleet, node))
        journal = (
            f"journalctl --no-pager -o short-iso-precise --since {shlex.quote(since)} {units}"
            + (" -f" if follow else "")
        )
        processes[node.name] = subprocess.Popen(
            ["ssh", "-F", str(config), node.name, journal],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
    width = max(len(name) for name in processes)
    if follow:
        lock = threading.Lock()

        def relay(name: str, stream) -> None:
            for line in stream:
                with lock:
                    click.echo(f"{name:<{width}}  {line}", nl=False)

        threads = [
            threading.Thread(target=relay, args=(name, process.stdout), daemon=True)
            for name, process in processes.items()
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join()
        except KeyboardInterrupt:
            pass
        finally:
            for process in processes.values():
                process.terminate()
        return
    lines, failed = [], []
    for name, process in processes.items():
        out, err = process.communicate(timeout=120)
        if process.returncode != 0:
            failed.append(f"{name}: {err.strip().splitlines()[-1] if err.strip() else 'failed'}")
        lines += [
            (line.split(" ", 1)[0], name, line)
            for line in out.splitlines()
            if line and not line.startswith("-- ")
        ]
    for _, name, line in sorted(lines):
        click.echo(f"{name:<{width}}  {line}")
    if failed:
        raise Failure("could not read the journal on " + "; ".join(failed))


@main.command()
@click.option("--apps", "of_apps", is_flag=True, help="an app's settings (docs/apps.md) instead")
def settings(of_apps: bool) -> None:
    """Every setting with its default and meaning (docs/settings.md)."""
    click.echo(app_markdown_table() if of_apps else markdown_table())


@main.command()
@inventory_option
@click.option("--schema", is_flag=True, help="the settings' JSON Schema instead (for editors)")
def config(inventory_path: str, schema: bool) -> None:
    """The inventory's settings as a deploy resolves them (every default filled in), as JSON.
    They hold no secret: those live in the secrets file, never here."""
    from wssfleet_control.settings import Settings

    if schema:
        click.echo(json.dumps(Settings.model_json_schema(), indent=2))
        return
    fleet = load_fleet(inventory_path)
    click.echo(fleet.settings.model_dump_json(indent=2))


@main.group()
def lab() -> None:
    """The local lab: real Debian hosts in systemd-nspawn and a local ACME server."""


@lab.command("up")
def lab_up() -> None:
    """Build and start the lab (a no-op when it is up)."""
    ensure_lab(str(LAB_INVENTORY))


@lab.command("status")
def lab_status() -> None:
    """Say whether the lab is up, and the state of each of its processes."""
    from lab import core

    sys.exit(core.status())


@lab.command("down")
@click.option("--purge", is_flag=True, help="remove the cached base filesystem as well")
def lab_down(purge: bool) -> None:
    """Stop and remove the lab: nothing is left behind."""
    from lab import core
    from lab.config import LabError

    try:
        core.down(purge=purge)
    except LabError as error:
        raise Failure(f"lab: {error}") from None


def _failures(report: dict[str, Any]) -> list[str]:
    errors = []
    for operation in report["operations"]:
        for host, outcome in operation["hosts"].items():
            if outcome["status"] == "failed":
                errors.append(f"{host}: {operation['name']} failed:\n{outcome.get('output', '')}")
    if report.get("error") and not errors:
        errors.append(report["error"])
    return errors


def _say(*words: object) -> None:
    """Progress, on stderr: also with --json, whose report is stdout."""
    click.echo(" ".join(str(word) for word in words), err=True)


def _print_start(session):
    drain = session.fleet.settings.drain_seconds

    def show(step) -> None:
        if step.app == BUILTIN_APP:
            moving = f"moving its clients (up to {drain} s), restarting…"
        else:
            stop = session.fleet.settings.apps[step.app].stop_timeout
            moving = f"no new clients, restarting (it has {stop} s to close its own)…"
        _say(f"    [{step.host}] {_instance(step.app, step.port)}: {step.reason}: {moving}")

    return show


def _print_step():
    def show(step) -> None:
        _say(
            f"    [{step.host}] {_instance(step.app, step.port)}: {step.reason} -> restarted, "
            f"healthy in {step.seconds} s",
        )

    return show


def _instance(app: str, port: int) -> str:
    """How a rollout step names its instance: the built-in service's by port, an app's with
    the app's name."""
    return f"instance {port}" if app == BUILTIN_APP else f"app {app} {port}"


def _locked(session, command: str) -> FleetLock:
    """The fleet lock, taken for ``command``; Failure naming the holder when it is not free."""
    lock = FleetLock(session, command)
    try:
        lock.acquire()
    except DeployError as error:
        raise Failure(str(error)) from None
    return lock


def _outcome(errors: list[str]) -> str:
    """A run's outcome as the audit log keeps it."""
    return f"failed: {errors[0][:300]}" if errors else "ok"


def _finish(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_report(report)
    if not report["ok"]:
        raise Failure("\n".join(report["errors"]))


def _print_report(report: dict[str, Any]) -> None:
    dry = report.get("dry")
    wanted = ("will change", "may change") if dry else ("changed", "failed")
    rows = [
        (operation["name"], host, outcome["status"])
        for operation in report.get("operations", [])
        for host, outcome in operation["hosts"].items()
        if outcome["status"] in wanted
    ]
    title = "would change" if dry else "changed"
    click.echo(f"--> Operations that {title} ({len(rows)}):")
    for name, host, state in rows:
        click.echo(f"    [{host}] {name}: {state}")
    steps = report.get("rollout", {}).get("steps", [])
    if dry:
        click.echo(f"--> Instances a deploy would restart ({len(steps)}):")
        for step in steps:
            click.echo(
                f"    [{step['host']}] {_instance(step['app'], step['port'])}: {step['reason']}"
            )
    elif "seconds" in report:
        click.echo(
            f"--> release {report.get('release') or '(none)'}: {len(rows)} changes, "
            f"{sum(step['outcome'] == 'done' for step in steps)} instances restarted, "
            f"in {report['seconds']} s"
        )


def _summary(fleet, inventory_path: str) -> None:
    domain = fleet.settings.domain
    click.echo(f"""
wssfleet is deployed: https://{domain}/  (WebSocket: wss://{domain}/ws)
Mint a token:  make token INVENTORY={inventory_path} SUB=NAME  (channels: lobby; CHANNELS='a b.*')
Open the demo: https://{domain}/#token=<token>&channel=lobby
Fleet status:  make status INVENTORY={inventory_path}""")
    if fleet.settings.certificate_source == "private_ca":
        click.echo(
            f"Clients trust the private CA's root: wssfleet private-ca -i {inventory_path} > "
            "fleet-ca.pem\n  (Debian: copy it to /usr/local/share/ca-certificates/fleet-ca.crt, "
            "then update-ca-certificates;\n  Node: NODE_EXTRA_CA_CERTS=fleet-ca.pem; Python: "
            "ssl.create_default_context(cafile='fleet-ca.pem'))"
        )
    if is_lab(inventory_path):
        root = (
            "the lab's ACME root: .lab/acme/root.pem"
            if fleet.settings.acme
            else "its root, as above"
        )
        click.echo(
            f"The lab's {domain} is not in public DNS: point it at the front door, e.g.\n"
            f"  echo '{fleet.front_door or fleet.master.address} {domain}' >> /etc/hosts\n"
            f"and trust {root}"
        )


@main.command(hidden=True)
@click.argument("inventory_path", metavar="INVENTORY")
def describe(inventory_path: str) -> None:
    """The inventory's hosts and data as JSON (how other processes read an inventory)."""
    from wssfleet_control import inventory

    try:
        described = inventory.describe(inventory_path)
    except SettingsError as error:
        raise InvalidSettings(str(error)) from None  # the reader shows its last line
    click.echo(json.dumps(described, default=str))
