"""Signed, expiring client tokens: JWT HS256 with ``sub`` and ``exp``, and optionally the
channels the token may use: ``subscribe`` and ``publish``, lists of patterns where ``*`` stands
for any run of channel characters (``user.alice.*``, ``lobby``, ``*``)."""

from __future__ import annotations

import functools
import hashlib
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

import jwt

ALGORITHM = "HS256"
# Subjects appear in messages ("from") and log lines: keep them short and printable.
SUBJECT = re.compile(r"^[A-Za-z0-9_.@:+-]{1,64}$")
PATTERN = re.compile(r"^[A-Za-z0-9_.:*-]{1,64}$")
PATTERN_RULE = "a channel pattern is 1-64 characters of A-Z a-z 0-9 _ . : - and * (any run)"
MAX_PATTERNS = 100
CLAIMS = ("subscribe", "publish")


class TokenError(Exception):
    """The token is missing, expired, forged or malformed; str() says which, never the token."""


def check_patterns(patterns: Iterable[str]) -> tuple[str, ...]:
    """The patterns, or ValueError naming the first bad one."""
    patterns = tuple(patterns)
    if len(patterns) > MAX_PATTERNS:
        raise ValueError(f"at most {MAX_PATTERNS} channel patterns")
    for pattern in patterns:
        if not isinstance(pattern, str) or not PATTERN.match(pattern):
            raise ValueError(f"{str(pattern)[:70]!r}: {PATTERN_RULE}")
    return patterns


@functools.lru_cache(maxsize=4096)
def _matcher(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    alternatives = "|".join(re.escape(p).replace(r"\*", "[A-Za-z0-9_.:-]*") for p in patterns)
    return re.compile(f"(?:{alternatives})")


def allows(patterns: tuple[str, ...], channel: str) -> bool:
    matcher = _matcher(patterns)
    return matcher is not None and matcher.fullmatch(channel) is not None


@dataclass(frozen=True)
class Grant:
    """Who a token is for and which channels it may use; None: the token names none, so the
    deployment's defaults apply."""

    subject: str
    subscribe: tuple[str, ...] | None = None
    publish: tuple[str, ...] | None = None


def key_id(secret: str) -> str:
    """Names a signing key in a token's header without revealing anything about it."""
    return hashlib.sha256(b"wssfleet key id:" + secret.encode()).hexdigest()[:16]


def mint(
    secret: str,
    subject: str,
    ttl_seconds: int,
    now: float | None = None,
    subscribe: Iterable[str] | None = None,
    publish: Iterable[str] | None = None,
) -> str:
    """Return a token for ``subject`` that expires ``ttl_seconds`` from now, limited to these
    channel patterns when given."""
    if not SUBJECT.match(subject):
        raise ValueError("the subject must be 1-64 characters of A-Z a-z 0-9 _ . @ : + -")
    if ttl_seconds <= 0:
        raise ValueError("the time to live must be a positive number of seconds")
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {"sub": subject, "iat": issued, "exp": issued + int(ttl_seconds)}
    for name, patterns in (("subscribe", subscribe), ("publish", publish)):
        if patterns is not None:
            claims[name] = list(check_patterns(patterns))
    return jwt.encode(claims, secret, algorithm=ALGORITHM, headers={"kid": key_id(secret)})


def _decoded(token: str, keys: list[str]) -> dict:
    """The token's claims under the first of ``keys`` that signed it (at most two HMACs)."""
    for key in keys[:-1]:
        try:
            return jwt.decode(
                token, key, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]}
            )
        except jwt.InvalidSignatureError:
            continue
    return jwt.decode(token, keys[-1], algorithms=[ALGORITHM], options={"require": ["sub", "exp"]})


def verify(secret: str, token: str | None, previous: str = "", max_ttl: int | None = None) -> Grant:
    """Return what the token grants, or raise TokenError. The token's ``kid`` picks the key:
    the current one, or the ``previous`` one while a rotation's overlap lasts. A token without
    a ``kid`` (an application that mints its own) is checked against the current key, then
    the previous one: it keeps working through the overlap like any other. A token meant to
    live longer than ``max_ttl`` seconds is refused."""
    if not token:
        raise TokenError("missing token")
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.InvalidTokenError as error:
        raise TokenError(f"invalid token ({type(error).__name__})") from None
    keys = {key_id(secret): secret, **({key_id(previous): previous} if previous else {})}
    if kid is not None and kid not in keys:
        raise TokenError("unknown signing key (another deployment's, or rotated out)")
    candidates = [keys[kid]] if kid is not None else [secret, *([previous] if previous else [])]
    try:
        claims = _decoded(token, candidates)
    except jwt.ExpiredSignatureError:
        raise TokenError("expired token") from None
    except jwt.InvalidSignatureError:
        raise TokenError("forged token") from None
    except jwt.InvalidTokenError as error:
        raise TokenError(f"invalid token ({type(error).__name__})") from None
    if max_ttl is not None:
        issued = claims.get("iat", time.time())
        if not isinstance(issued, int | float) or claims["exp"] - issued > max_ttl:
            raise TokenError(f"token lives longer than the {max_ttl} s this service accepts")
    subject = claims["sub"]
    if not isinstance(subject, str) or not SUBJECT.match(subject):
        raise TokenError("invalid token (bad subject)")
    granted: dict[str, tuple[str, ...]] = {}
    for name in CLAIMS:
        if name in claims:
            if not isinstance(claims[name], list):
                raise TokenError(f"invalid token ({name} is not a list)")
            try:
                granted[name] = check_patterns(claims[name])
            except ValueError:
                raise TokenError(f"invalid token (bad {name} pattern)") from None
    return Grant(subject, **granted)
