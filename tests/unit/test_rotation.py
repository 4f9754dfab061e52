"""Signing key rotation: tokens name their key, the previous key is accepted for the longest
token lifetime after a rotation, then dropped; nobody is logged out by a rotation."""

from __future__ import annotations

import json
import time

import jwt
import pytest

from tests.unit.clients import open_client, run
from tests.unit.helpers import SECRET, refusal
from wssfleet import auth
from wssfleet_control import secrets

OLD = "the-old-signing-key-that-is-long-enough-0123456789"
NEW = "the-new-signing-key-that-is-long-enough-0123456789"


def test_a_token_names_its_key_and_each_key_checks_only_its_own_tokens():
    old_token = auth.mint(OLD, "alice", 60)
    assert jwt.get_unverified_header(old_token)["kid"] == auth.key_id(OLD)
    assert auth.verify(NEW, old_token, previous=OLD).subject == "alice"
    with pytest.raises(auth.TokenError, match="unknown signing key"):
        auth.verify(NEW, old_token)
    # A token without a key id (an application's backend minted it) is checked against the
    # current key, then the previous one: a rotation's overlap covers it too, then it ends.
    claims = {"sub": "bob", "exp": int(time.time()) + 60}
    bare = jwt.encode(claims, NEW, algorithm="HS256")
    assert auth.verify(NEW, bare, previous=OLD).subject == "bob"
    bare_old = jwt.encode(claims, OLD, algorithm="HS256")
    assert auth.verify(NEW, bare_old, previous=OLD).subject == "bob"
    with pytest.raises(auth.TokenError, match="forged token"):
        auth.verify(NEW, bare_old)
    bare_other = jwt.encode(claims, "another-key-" * 4, algorithm="HS256")
    with pytest.raises(auth.TokenError, match="forged token"):
        auth.verify(NEW, bare_other, previous=OLD)


def test_a_token_meant_to_outlive_the_longest_lifetime_is_refused():
    long_lived = auth.mint(NEW, "alice", 7200)
    with pytest.raises(auth.TokenError, match="longer than the 3600 s"):
        auth.verify(NEW, long_lived, max_ttl=3600)
    assert auth.verify(NEW, auth.mint(NEW, "alice", 3600), max_ttl=3600).subject == "alice"


def test_rotate_keeps_the_old_key_for_the_overlap_then_a_deploy_drops_it(tmp_path):
    inventory = tmp_path / "production.py"
    inventory.write_text("")
    with pytest.raises(ValueError, match="no signing key yet"):
        secrets.rotate(inventory, 3600)
    first = secrets.load(inventory)["jwt_secret"]
    rotated = secrets.rotate(inventory, 3600)
    assert rotated["jwt_secret"] != first
    assert secrets.previous_key(rotated) == first
    assert abs(int(rotated["jwt_previous_until"]) - (time.time() + 3600)) < 5
    with pytest.raises(ValueError, match=r"still accepted until .* pass --force"):
        secrets.rotate(inventory, 3600)
    forced = secrets.rotate(inventory, 3600, force=True)
    assert secrets.previous_key(forced) == rotated["jwt_secret"]
    # The overlap ends: what a deploy loads no longer holds the old key, on disk either.
    path = secrets.path_for(inventory)
    stored = json.loads(path.read_text())
    stored["jwt_previous_until"] = str(int(time.time()) - 1)
    path.write_text(json.dumps(stored))
    assert secrets.previous_key(secrets.load(inventory, create=False)) == ""
    secrets.load(inventory)
    assert "jwt_previous_secret" not in json.loads(path.read_text())
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_service_accepts_the_previous_key_until_it_is_dropped(start_service):
    previous = "a-previous-signing-key-that-is-long-enough-01234567"
    overlapping = start_service(WSSFLEET_JWT_PREVIOUS_SECRET=previous)
    after = start_service()
    old_token = auth.mint(previous, "alice", 300, subscribe=["*"], publish=["*"])
    current_token = auth.mint(SECRET, "alice", 300, subscribe=["*"], publish=["*"])

    async def scenario():
        await open_client(overlapping, token_text=old_token)
        await open_client(overlapping, token_text=current_token)
        await open_client(after, token_text=current_token)

    run(scenario())
    assert refusal(after, f"/ws?token={old_token}") == 401
    assert "unknown signing key" in after.log.read_text()


def test_the_service_stops_accepting_the_previous_key_when_its_overlap_ends(start_service):
    previous = "a-previous-signing-key-that-is-long-enough-01234567"
    ending = start_service(
        WSSFLEET_JWT_PREVIOUS_SECRET=previous, WSSFLEET_JWT_PREVIOUS_UNTIL=str(int(time.time()) + 2)
    )
    old_token = auth.mint(previous, "alice", 300, subscribe=["*"], publish=["*"])

    async def scenario():
        await open_client(ending, token_text=old_token)

    run(scenario())
    # No deploy comes: the process itself stops accepting it when the overlap ends.
    time.sleep(max(0.0, int(time.time()) + 3 - time.time()))
    assert refusal(ending, f"/ws?token={old_token}") == 401


def test_revoke_drops_the_current_and_the_previous_key_at_once(tmp_path):
    inventory = tmp_path / "production.py"
    inventory.write_text("")
    first = secrets.load(inventory)["jwt_secret"]
    rotated = secrets.rotate(inventory, 3600)
    revoked = secrets.rotate(inventory, 3600, revoke=True)
    assert revoked["jwt_secret"] not in (first, rotated["jwt_secret"])
    assert secrets.previous_key(revoked) == ""
    assert secrets.previous_until(revoked) == 0
    stored = json.loads(secrets.path_for(inventory).read_text())
    assert "jwt_previous_secret" not in stored
    assert first not in json.dumps(stored)
    assert rotated["jwt_secret"] not in json.dumps(stored)
