"""The service's own HS256 check against PyJWT's verdicts: every token below is accepted by
both or refused by both, and the few places where wssfleet is stricter are named. PyJWT is the
oracle here only; the service does not import it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest

from wssfleet import auth

KEY = "the-signing-key-of-this-deployment-long-enough-for-hs512-too-0123456789"
OTHER_KEY = "a-key-from-somewhere-else-entirely-0123456789"
NOW = int(time.time())


def segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: object, claims: object | str, key: str = KEY) -> str:
    """A token signed with HS256 whatever its header says, claims as given (str: raw JSON)."""
    body = claims if isinstance(claims, str) else json.dumps(claims)
    signing_input = f"{segment(json.dumps(header).encode())}.{segment(body.encode())}"
    signature = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{segment(signature)}"


def with_standard_base64_signature() -> str:
    """A good token whose signature is written in base64's + and / instead of - and _."""
    token = next(
        token
        for n in range(1000)
        if set("-_") & set((token := handmade({"alg": "HS256"}, {**GOOD, "n": n})).split(".")[2])
    )
    signing_input, _, signature = token.rpartition(".")
    return f"{signing_input}.{signature.replace('-', '+').replace('_', '/')}"


GOOD = {"sub": "alice", "exp": NOW + 600}
TOKENS = {
    "good": jwt.encode(GOOD, KEY, algorithm="HS256"),
    "good with iat and nbf": jwt.encode(
        {**GOOD, "iat": NOW - 5, "nbf": NOW - 5}, KEY, algorithm="HS256"
    ),
    "good with a float exp": jwt.encode({**GOOD, "exp": NOW + 600.5}, KEY, algorithm="HS256"),
    "padded after signing": handmade({"alg": "HS256"}, GOOD).replace(".", "==.", 1),
    "expired": jwt.encode({**GOOD, "exp": NOW - 10}, KEY, algorithm="HS256"),
    "not before later": jwt.encode({**GOOD, "nbf": NOW + 300}, KEY, algorithm="HS256"),
    "issued later": jwt.encode({**GOOD, "iat": NOW + 300}, KEY, algorithm="HS256"),
    "with an audience": jwt.encode({**GOOD, "aud": "someone"}, KEY, algorithm="HS256"),
    "no sub": jwt.encode({"exp": NOW + 600}, KEY, algorithm="HS256"),
    "no exp": jwt.encode({"sub": "alice"}, KEY, algorithm="HS256"),
    "exp is a list": handmade({"alg": "HS256"}, {**GOOD, "exp": [NOW + 600]}),
    "exp is Infinity": handmade({"alg": "HS256"}, '{"sub": "alice", "exp": Infinity}'),
    "claims are a list": handmade({"alg": "HS256"}, [GOOD]),
    "claims are not JSON": handmade({"alg": "HS256"}, "{sub: alice}"),
    "alg none": jwt.encode(GOOD, None, algorithm="none"),
    "alg none, signed anyway": handmade({"alg": "none"}, GOOD),
    "alg HS512": jwt.encode(GOOD, KEY, algorithm="HS512"),
    "alg HS384 signed as HS256": handmade({"alg": "HS384"}, GOOD),
    "no alg": handmade({"typ": "JWT"}, GOOD),
    "kid is a number": handmade({"alg": "HS256", "kid": 7}, GOOD),
    "header is a list": handmade(["HS256"], GOOD),
    "another key": jwt.encode(GOOD, OTHER_KEY, algorithm="HS256"),
    "claims swapped in": (
        lambda good, forged: f"{good.split('.')[0]}.{forged.split('.')[1]}.{good.split('.')[2]}"
    )(
        jwt.encode(GOOD, KEY, algorithm="HS256"),
        jwt.encode({**GOOD, "sub": "root"}, KEY, algorithm="HS256"),
    ),
    "signature cut": jwt.encode(GOOD, KEY, algorithm="HS256")[:-4],
    "no signature": jwt.encode(GOOD, KEY, algorithm="HS256").rpartition(".")[0] + ".",
    "two segments": jwt.encode(GOOD, KEY, algorithm="HS256").rpartition(".")[0],
    "four segments": jwt.encode(GOOD, KEY, algorithm="HS256") + ".e30",
    "standard base64": with_standard_base64_signature(),
    "not ASCII": "é" + jwt.encode(GOOD, KEY, algorithm="HS256"),
    "nested header": f"{segment(b'[' * 5000)}.e30.AAAA",
    "garbage": "forged.token.value",
}


def oracle(token: str) -> bool:
    try:
        jwt.decode(token, KEY, algorithms=["HS256"], options={"require": ["sub", "exp"]})
    except jwt.InvalidTokenError:
        return False
    return True


def accepted(token: str) -> bool:
    try:
        auth.verify(KEY, token)
    except auth.TokenError:
        return False
    return True


@pytest.mark.parametrize("name", TOKENS)
def test_the_service_and_pyjwt_agree_on_every_token(name):
    token = TOKENS[name]
    verdict = oracle(token)
    # The tokens whose names start with "good" are the accepted ones: the oracle is no
    # oracle if it refuses those or takes any other.
    assert verdict == name.startswith("good"), name
    assert accepted(token) == verdict, name


@pytest.mark.parametrize(
    "name, claims",
    [
        ("exp as a string of digits", {"sub": "alice", "exp": str(NOW + 600)}),
        ("iat as a string of digits", {**GOOD, "iat": str(NOW - 5)}),
        ("exp as true", {"sub": "alice", "exp": True}),
    ],
)
def test_the_service_is_stricter_than_pyjwt_on_dates_that_are_not_numbers(name, claims):
    # RFC 7519 makes a date a JSON number; PyJWT passes these through int().
    token = jwt.encode(claims, KEY, algorithm="HS256")
    with pytest.raises(auth.TokenError, match="is not a number"):
        auth.verify(KEY, token)


def test_a_minted_token_is_a_standard_jwt_naming_its_key():
    token = auth.mint(KEY, "alice", 300, subscribe=["lobby"], publish=["user.alice.*"])
    claims = jwt.decode(token, KEY, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 300
    assert claims["subscribe"] == ["lobby"] and claims["publish"] == ["user.alice.*"]
    assert jwt.get_unverified_header(token) == {
        "alg": "HS256",
        "kid": auth.key_id(KEY),
        "typ": "JWT",
    }
    grant = auth.verify(KEY, token)
    assert (grant.subject, grant.subscribe, grant.publish) == (
        "alice",
        ("lobby",),
        ("user.alice.*",),
    )


@pytest.mark.parametrize(
    "token, reason",
    [
        (TOKENS["expired"], "expired token"),
        (TOKENS["another key"], "forged token"),
        (TOKENS["alg none"], "the algorithm must be HS256"),
        (TOKENS["with an audience"], "names an audience"),
        (TOKENS["nested header"], "malformed"),
        (TOKENS["exp is Infinity"], "malformed claims"),
    ],
    ids=["expired", "another key", "alg none", "audience", "nested header", "Infinity"],
)
def test_a_refusal_says_why_without_the_token(token, reason):
    with pytest.raises(auth.TokenError, match=reason) as refused:
        auth.verify(KEY, token)
    assert token not in str(refused.value)
