"""Per-deployment secrets, made once on the control machine and never committed.

They live beside the inventory in ``.secrets/<inventory name>.json`` (git-ignored, mode 600).
Operators who keep secrets in a vault name a command that prints them (the ``secrets_command``
setting: ``pass``, ``op``, ``vault kv get``) or set ``WSSFLEET_SECRET_<NAME>`` in the
environment (a CI runner): those values take precedence over the file and are never written
to it; what they do not give (the internal CA, say) stays in the file.

After ``wssfleet rotate-secret`` the file also holds the previous token signing key
(``jwt_previous_secret``) and until when it is still accepted (``jwt_previous_until``, Unix
seconds): tokens signed before the rotation keep working for their whole lifetime, and the
first deploy after that moment drops the old key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path

from wssfleet_control import internal_tls, site_certificate, vault

NAMES = (
    "jwt_secret",
    "redis_password",
    "redis_admin_password",
    "redis_monitor_password",
    # With several redis hosts: what replicas log in to Redis with; what the Sentinels log in
    # to Redis with, and to each other (both only on Sentinel hosts); what the workers ask the
    # Sentinels with (a user that may only ask where the primary is).
    "redis_replication_password",
    "sentinel_redis_password",
    "sentinel_peer_password",
    "sentinel_client_password",
    # What each redis host's promotion guard asks the Sentinels with (roles/redis.py).
    "sentinel_guard_password",
    # With a floating front door: the masters' VRRP authentication (keepalived).
    "front_door_password",
    # What the master's rebalancer presents to the workers' /internal/shed.
    "internal_key",
    # What each master's canary signs its tokens with: the workers accept it for the
    # wssfleet.canary.* channels only (roles/canary.py).
    "canary_key",
)
# Secrets no longer used, dropped from the file at the next deploy: redis_sentinel_password was
# the Sentinels' and also in every worker's environment (issue #33); its three successors are
# new values.
RETIRED = ("redis_sentinel_password",)
PREVIOUS = "jwt_previous_secret"
PREVIOUS_UNTIL = "jwt_previous_until"
# Fingerprints of the signing keys this file replaced on purpose (a revoke, an overlap that
# ended): a host that still records one was not forked from another machine
# (secret_records.py). The last REVOKED_KEPT.
REVOKED = "jwt_revoked_fingerprints"
REVOKED_KEPT = 5
# What `wssfleet plan` renders where a secret does not exist yet: plan writes nothing.
NOT_YET = "(not made yet: the first deploy makes this secret)"


# An app's secret (settings: apps), as inventory.app_redis_secret names it.
APP_SECRET = re.compile(r"app_[a-z0-9_]+")
# Where values from outside the file may come from, and what they may name.
ENVIRONMENT_PREFIX = "WSSFLEET_SECRET_"
# Secrets only the operator can give (never made here), by the DNS-01 provider that uses them
# (certificate_source acme_dns): the TSIG key their DNS server takes updates with, a Cloudflare
# API token, an AWS IAM user's secret key. What each is, for the error when it is missing.
GIVEN_BY_PROVIDER = {
    "rfc2136": ("acme_dns_tsig_secret", "the TSIG key acme_dns_tsig_key names, base64"),
    "cloudflare": (
        "acme_dns_cloudflare_api_token",
        "a Cloudflare API token allowed Zone:DNS:Edit on the domains' zone",
    ),
    "route53": (
        "acme_dns_route53_secret_access_key",
        "the secret access key of acme_dns_route53_access_key_id",
    ),
}
GIVEN = tuple(name for name, _ in GIVEN_BY_PROVIDER.values())
FROM_OUTSIDE = (*NAMES, PREVIOUS, PREVIOUS_UNTIL, REVOKED, *GIVEN)
_printed: dict[str, dict[str, str]] = {}


class SecretsError(ValueError):
    """Secrets could not be read from where the settings say; the message says why."""


def from_outside(
    command: str | None,
    environment: dict[str, str] | os._Environ[str] = os.environ,
    more: Collection[str] = (),
) -> dict[str, str]:
    """The secrets ``command`` prints (a JSON object of strings) and, over them, the
    environment's WSSFLEET_SECRET_<NAME>: FROM_OUTSIDE's and the ``more`` names (the apps').
    A name that is no secret is refused: a typo in a vault would otherwise leave the file's
    value in use without a word."""
    allowed = (*FROM_OUTSIDE, *more)
    found: dict[str, str] = {}
    if command in _printed:
        found = dict(_printed[command])
    elif command:
        try:
            printed = vault.printed_by(command, "secrets_command")
        except vault.CommandError as error:
            raise SecretsError(str(error)) from None
        try:
            found = json.loads(printed)
        except ValueError:
            found = None  # type: ignore[assignment]
        if not isinstance(found, dict) or not all(
            isinstance(value, str) for value in found.values()
        ):
            raise SecretsError(
                f"secrets_command {command!r} must print one JSON object of strings, like "
                '{"jwt_secret": "…", "redis_password": "…"}'
            )
        unknown = sorted(
            name for name in found if name not in allowed and not APP_SECRET.fullmatch(name)
        )
        if unknown:
            raise SecretsError(
                f"secrets_command {command!r} gives {', '.join(unknown)}: a vault may give "
                f"only {', '.join(allowed)} (the internal CA and certificates, which the "
                "deploy renews, stay in the secrets file)"
            )
        # Once a run: a vault may ask its user to unlock it.
        _printed[command] = dict(found)
    for name in allowed:
        value = environment.get(ENVIRONMENT_PREFIX + name.upper())
        if value:
            found[name] = value
    return {name: value for name, value in found.items() if value}


def path_for(inventory: str | os.PathLike[str]) -> Path:
    inventory = Path(inventory)
    return inventory.resolve().parent / ".secrets" / f"{inventory.stem}.json"


def load(
    inventory: str | os.PathLike[str],
    create: bool = True,
    tls_hosts: dict[str, str] | None = None,
    tls_clients: Collection[str] = (),
    command: str | None = None,
    more: Collection[str] = (),
    private_ca_domains: Collection[str] = (),
) -> dict[str, str]:
    """Return the deployment's secrets (NAMES and those ``more`` names, an app's), generating
    the missing ones when ``create`` (with
    ``tls_hosts``, name: private address, also the internal CA and those hosts' certificates,
    the ones in ``tls_clients`` for clients too: internal_tls.py). What ``command`` and the
    environment give (from_outside) takes precedence and is never written to the file.
    With ``private_ca_domains``, also the private CA and its certificate for those domains
    (site_certificate.py)."""
    if not Path(inventory).is_file():
        raise ValueError(f"inventory {inventory} does not exist")
    path = path_for(inventory)
    outside = from_outside(command, more=more)
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    stored.update(outside)
    missing = [name for name in (*NAMES, *more) if not stored.get(name)]
    if missing and not create:
        return {**stored, **dict.fromkeys(missing, NOT_YET)}
    changed = False
    for name in RETIRED:
        if create and name in stored:
            del stored[name]
            changed = True
    for name in missing:
        stored[name] = secrets.token_urlsafe(32)
        changed = True
    if (
        create
        and PREVIOUS not in outside
        and stored.get(PREVIOUS)
        and float(stored.get(PREVIOUS_UNTIL, 0)) <= time.time()
    ):
        # The overlap is over: every token the old key signed has expired.
        _replaced(stored, stored.pop(PREVIOUS))
        del stored[PREVIOUS_UNTIL]
        changed = True
    if create and tls_hosts and internal_tls.ensure(stored, tls_hosts, tls_clients):
        changed = True
    if (
        create
        and private_ca_domains
        and site_certificate.ensure_private_ca(stored, list(private_ca_domains))
    ):
        changed = True
    if changed:
        _write(path, {name: value for name, value in stored.items() if name not in outside})
    return stored


def _write(path: Path, stored: dict[str, str]) -> None:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(stored, handle, indent=2)
    temporary.replace(path)


def renew_private_ca(inventory: str | os.PathLike[str], domains: Collection[str]) -> None:
    """A new certificate from the private CA now (`wssfleet renew`), whatever is left of the
    current one; the CA stays."""
    path = path_for(inventory)
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    if not stored.get(site_certificate.CA_KEY):
        raise ValueError(f"{inventory} has no private CA yet: deploy it first")
    stored.pop(site_certificate.ISSUED, None)
    site_certificate.ensure_private_ca(stored, list(domains))
    _write(path, stored)


def fingerprint(name: str, value: str) -> str:
    """What a host records of a secret (secret_records.py): a hash of a 256-bit random value
    tells nothing of it."""
    return hashlib.sha256(f"wssfleet secret\0{name}\0{value}".encode()).hexdigest()[:32]


def _replaced(stored: dict[str, str], key: str) -> None:
    """Remember that the signing key ``key`` was replaced on purpose."""
    kept = [*stored.get(REVOKED, "").split(), fingerprint("jwt_secret", key)]
    stored[REVOKED] = " ".join(kept[-REVOKED_KEPT:])


def previous_key(stored: dict[str, str], now: float | None = None) -> str:
    """The previous signing key while it is still accepted, else ''."""
    now = time.time() if now is None else now
    if stored.get(PREVIOUS) and float(stored.get(PREVIOUS_UNTIL, 0)) > now:
        return stored[PREVIOUS]
    return ""


def previous_until(stored: dict[str, str], now: float | None = None) -> int:
    """When the services stop accepting the previous key by themselves (0: there is none)."""
    return int(float(stored[PREVIOUS_UNTIL])) if previous_key(stored, now) else 0


def rotate(
    inventory: str | os.PathLike[str],
    overlap_seconds: int,
    force: bool = False,
    revoke: bool = False,
    command: str | None = None,
) -> dict[str, str]:
    """Make a new signing key; keep the current one as the previous for ``overlap_seconds``
    (the longest a token may live), so no token in use stops working. ``revoke``: a leaked
    key; keep neither it nor any previous one, and every token they signed stops now."""
    if "jwt_secret" in from_outside(command):
        raise ValueError(
            "the signing key comes from secrets_command or WSSFLEET_SECRET_JWT_SECRET: rotate it "
            "there (jwt_previous_secret: the current key, jwt_previous_until: now plus "
            "token_max_ttl in Unix seconds, jwt_secret: a new one), then deploy"
        )
    stored = load(inventory, create=False)
    if stored["jwt_secret"] == NOT_YET:
        raise ValueError(f"{inventory} has no signing key yet: deploy it first")
    now = time.time()
    if revoke:
        for key in (stored.pop(PREVIOUS, None), stored["jwt_secret"]):
            if key:
                _replaced(stored, key)
        stored.pop(PREVIOUS_UNTIL, None)
        stored["jwt_secret"] = secrets.token_urlsafe(32)
        _write(path_for(inventory), stored)
        return stored
    if previous_key(stored, now) and not force:
        until = datetime.fromtimestamp(float(stored[PREVIOUS_UNTIL]), UTC)
        raise ValueError(
            f"the previous key is still accepted until {until:%Y-%m-%d %H:%M:%S} UTC: rotating "
            "again now would stop the tokens it signed; wait until then, or pass --force"
        )
    stored[PREVIOUS] = stored["jwt_secret"]
    stored[PREVIOUS_UNTIL] = str(int(now + overlap_seconds))
    stored["jwt_secret"] = secrets.token_urlsafe(32)
    _write(path_for(inventory), stored)
    return stored
