"""Signed, expiring client tokens: JWT HS256 with ``sub`` and ``exp``."""

from __future__ import annotations

import re
import time

import jwt

ALGORITHM = "HS256"
# Subjects appear in messages ("from") and log lines: keep them short and printable.
SUBJECT = re.compile(r"^[A-Za-z0-9_.@:+-]{1,64}$")


class TokenError(Exception):
    """The token is missing, expired, forged or malformed; str() says which, never the token."""


def mint(secret: str, subject: str, ttl_seconds: int, now: float | None = None) -> str:
    """Return a token for ``subject`` that expires ``ttl_seconds`` from now."""
    if not SUBJECT.match(subject):
        raise ValueError("the subject must be 1-64 characters of A-Z a-z 0-9 _ . @ : + -")
    if ttl_seconds <= 0:
        raise ValueError("the time to live must be a positive number of seconds")
    issued = int(time.time() if now is None else now)
    claims = {"sub": subject, "iat": issued, "exp": issued + int(ttl_seconds)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(secret: str, token: str | None) -> str:
    """Return the token's subject, or raise TokenError."""
    if not token:
        raise TokenError("missing token")
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]}
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("expired token") from None
    except jwt.InvalidSignatureError:
        raise TokenError("forged token") from None
    except jwt.InvalidTokenError as error:
        raise TokenError(f"invalid token ({type(error).__name__})") from None
    subject = claims["sub"]
    if not isinstance(subject, str) or not SUBJECT.match(subject):
        raise TokenError("invalid token (bad subject)")
    return subject
