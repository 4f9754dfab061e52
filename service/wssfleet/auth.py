"""Signed, expiring client tokens: JWT HS256 with ``sub`` and ``exp``, and optionally the
channels the token may use: ``subscribe`` and ``publish``, lists of patterns where ``*`` stands
for any run of channel characters (``user.alice.*``, ``lobby``, ``*``).

The JWT is checked here with the standard library: one token format, one algorithm, so a
general JWT library's import (PyJWT pulls in ``cryptography``) and its second pass over every
token are cost without use. It refuses what PyJWT refuses for this use (RFC 7519): any other
``alg`` (``none`` included), a non-string ``kid``, a missing ``sub`` or ``exp``, an expired
token, a ``nbf`` or ``iat`` in the future, any ``aud`` (this service is no audience), and
claims that are not numbers where dates belong. The signature is checked before the claims
are parsed. tests/unit/test_tokens.py holds it to PyJWT's verdicts."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

ALGORITHM = "HS256"
SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
# Subjects appear in messages ("from") and log lines: keep them short and printable.
SUBJECT = re.compile(r"[A-Za-z0-9_.@:+-]{1,64}")
PATTERN = re.compile(r"[A-Za-z0-9_.:*-]{1,64}")
PATTERN_RULE = "a channel pattern is 1-64 characters of A-Z a-z 0-9 _ . : - and * (any run)"
MAX_PATTERNS = 100
CLAIMS = ("subscribe", "publish")
# The canary's channels (hostside/canary.py on each master): a token signed with the canary
# key may use these and nothing else, whatever it claims, so a master's key is worth a
# canary's messages and no client's.
CANARY_CHANNELS = ("wssfleet.canary.*",)
# Which key signed a token.
CURRENT, PREVIOUS, CANARY = "current", "previous", "canary"


class TokenError(Exception):
    """The token is missing, expired, forged or malformed; str() says which, never the token."""


def check_patterns(patterns: Iterable[str]) -> tuple[str, ...]:
    """The patterns, or ValueError naming the first bad one."""
    patterns = tuple(patterns)
    if len(patterns) > MAX_PATTERNS:
        raise ValueError(f"at most {MAX_PATTERNS} channel patterns")
    for pattern in patterns:
        if not isinstance(pattern, str) or not PATTERN.fullmatch(pattern):
            raise ValueError(f"{str(pattern)[:70]!r}: {PATTERN_RULE}")
    return patterns


class Matcher:
    """A token's channel patterns, matched in time linear in the channel's length whatever
    the patterns: a regex of several ``*`` backtracks (``*a*a*a*a*a*a*a*a*b`` against 40
    characters took 2.75 s, during which the process served nobody). Exact names are a set;
    a pattern with stars is its literal parts: a prefix, a suffix, and the parts between, each
    found leftmost after the one before (for ``*``-only globs, the leftmost match of each part
    is the one that leaves most room for the rest)."""

    __slots__ = ("exact", "globs")

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.exact = frozenset(p for p in patterns if "*" not in p)
        globs = []
        for pattern in dict.fromkeys(p for p in patterns if "*" in p):
            parts = pattern.split("*")
            middle = tuple(part for part in parts[1:-1] if part)
            globs.append((parts[0], middle, parts[-1], sum(map(len, parts))))
        self.globs = tuple(globs)

    def __call__(self, channel: str) -> bool:
        if channel in self.exact:
            return True
        length = len(channel)
        for prefix, middle, suffix, least in self.globs:
            if length < least or not channel.startswith(prefix) or not channel.endswith(suffix):
                continue
            position, end = len(prefix), length - len(suffix)
            for part in middle:
                found = channel.find(part, position, end)
                if found < 0:
                    break
                position = found + len(part)
            else:
                return True
        return False


@functools.lru_cache(maxsize=4096)
def _matcher(patterns: tuple[str, ...]) -> Matcher | None:
    return Matcher(patterns) if patterns else None


@functools.lru_cache(maxsize=4096)
def _shared(patterns: tuple[str, ...]) -> tuple[str, ...]:
    """One tuple for equal pattern lists: an application's tokens mostly grant the same few,
    and every connection keeps its token's (memory per connection)."""
    return patterns


def allows(patterns: tuple[str, ...], channel: str) -> bool:
    matcher = _matcher(patterns)
    return matcher is not None and matcher(channel)


@dataclass(frozen=True, slots=True)
class Grant:
    """Who a token is for, until when (Unix seconds: its exp, or the end of its key's
    overlap), and which channels it may use; None: the token names none, so the deployment's
    defaults apply."""

    subject: str
    expires: float
    subscribe: tuple[str, ...] | None = None
    publish: tuple[str, ...] | None = None


@functools.lru_cache(maxsize=8)
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
    if not SUBJECT.fullmatch(subject):
        raise ValueError("the subject must be 1-64 characters of A-Z a-z 0-9 _ . @ : + -")
    if ttl_seconds <= 0:
        raise ValueError("the time to live must be a positive number of seconds")
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {"sub": subject, "iat": issued, "exp": issued + int(ttl_seconds)}
    for name, patterns in (("subscribe", subscribe), ("publish", publish)):
        if patterns is not None:
            claims[name] = list(check_patterns(patterns))
    header = {"alg": ALGORITHM, "kid": key_id(secret), "typ": "JWT"}
    signing_input = f"{_encoded(header)}.{_encoded(claims)}"
    return f"{signing_input}.{_segment(_signature(secret, signing_input))}"


def _segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _encoded(value: dict) -> str:
    return _segment(json.dumps(value, separators=(",", ":")).encode())


def _decoded(segment: str) -> bytes:
    """A base64url segment's bytes, or ValueError. Only the canonical spelling (no padding,
    unused bits zero) is accepted: one signature, one way to write it."""
    if not SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if _segment(data) != segment:
        raise ValueError("not canonical base64url")
    return data


def _refuse_constant(name: str) -> None:
    # json reads NaN and Infinity, which no JSON encoder writes: an "exp" of Infinity would
    # never expire.
    raise ValueError(f"{name} is not JSON")


def _object(segment: str) -> dict:
    value = json.loads(_decoded(segment), parse_constant=_refuse_constant)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _signature(key: str, signing_input: str) -> bytes:
    return hmac.new(key.encode(), signing_input.encode("ascii"), hashlib.sha256).digest()


def _date(claims: dict, name: str) -> float | None:
    """A NumericDate claim (RFC 7519: a JSON number), None when absent."""
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(f"invalid token ({name} is not a number)")
    return value


def _checked(
    token: str, secret: str, previous: str, skew: float, canary: str = ""
) -> tuple[dict, str]:
    """The claims of a token signed with HS256 by a key it may use, and which key signed it
    (CURRENT, PREVIOUS or CANARY); or TokenError."""
    try:
        signing_input, _, signature_segment = token.rpartition(".")
        header_segment, dot, payload_segment = signing_input.partition(".")
        if not dot or "." in payload_segment:
            raise ValueError("not three segments")
        header = _object(header_segment)
        signature = _decoded(signature_segment)
    except (ValueError, RecursionError, UnicodeError):
        raise TokenError("invalid token (malformed)") from None
    if header.get("alg") != ALGORITHM:
        raise TokenError(f"invalid token (the algorithm must be {ALGORITHM})")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise TokenError("invalid token (kid is not a string)")
    keys = {key_id(secret): (secret, CURRENT)}
    if previous:
        keys.setdefault(key_id(previous), (previous, PREVIOUS))
    if canary and kid == key_id(canary):
        # Only when named, and never in place of a client key: a token without a kid is
        # never taken for a canary's.
        keys.setdefault(kid, (canary, CANARY))
    if kid is not None and kid not in keys:
        raise TokenError("unknown signing key (another deployment's, or rotated out)")
    # A token without a kid (an application that mints its own) may be signed with either.
    candidates = (
        [keys[kid]]
        if kid is not None
        else [keys[key_id(secret)], *([keys[key_id(previous)]] if previous else [])]
    )
    signed = (
        signer
        for key, signer in candidates
        if hmac.compare_digest(_signature(key, signing_input), signature)
    )
    signer = next(signed, None)
    if signer is None:
        raise TokenError("forged token")
    try:
        claims = _object(payload_segment)
    except (ValueError, RecursionError, UnicodeError):
        raise TokenError("invalid token (malformed claims)") from None
    for name in ("sub", "exp"):
        if name not in claims:
            raise TokenError(f"invalid token (no {name})")
    now = time.time()
    if _date(claims, "exp") <= now:
        raise TokenError("expired token")
    for name in ("nbf", "iat"):
        moment = _date(claims, name)
        if moment is not None and moment > now + skew:
            raise TokenError(f"invalid token ({name} is in the future)")
    if "aud" in claims:
        raise TokenError("invalid token (it names an audience; this service is none)")
    return claims, signer


def verify(
    secret: str,
    token: str | None,
    previous: str = "",
    max_ttl: int | None = None,
    previous_until: float = 0,
    skew: float = 0,
    canary: str = "",
) -> Grant:
    """Return what the token grants, or raise TokenError. The token's ``kid`` picks the key:
    the current one, or the ``previous`` one while a rotation's overlap lasts (until
    ``previous_until``, when given: the grant expires then at the latest). A token without a
    ``kid`` (an application that mints its own) is checked against the current key, then the
    previous one: it keeps working through the overlap like any other. A token meant to live
    longer than ``max_ttl`` seconds is refused; ``nbf`` and ``iat`` may lie ``skew`` seconds
    in the future. A token signed with the ``canary`` key (named by its kid) may use
    CANARY_CHANNELS only."""
    if not token:
        raise TokenError("missing token")
    claims, signer = _checked(token, secret, previous, skew, canary)
    if max_ttl is not None:
        issued = claims.get("iat", time.time())
        if claims["exp"] - issued > max_ttl:
            raise TokenError(f"token lives longer than the {max_ttl} s this service accepts")
    subject = claims["sub"]
    if not isinstance(subject, str) or not SUBJECT.fullmatch(subject):
        raise TokenError("invalid token (bad subject)")
    granted: dict[str, tuple[str, ...]] = {}
    for name in CLAIMS:
        if name in claims:
            if not isinstance(claims[name], list):
                raise TokenError(f"invalid token ({name} is not a list)")
            try:
                granted[name] = _shared(check_patterns(claims[name]))
            except ValueError:
                raise TokenError(f"invalid token (bad {name} pattern)") from None
    expires = float(claims["exp"])
    if signer == CANARY:
        return Grant(subject, expires, subscribe=CANARY_CHANNELS, publish=CANARY_CHANNELS)
    if signer == PREVIOUS and previous_until:
        expires = min(expires, float(previous_until))
    return Grant(subject, expires, **granted)
