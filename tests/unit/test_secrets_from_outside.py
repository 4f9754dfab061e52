"""Secrets from a vault: ``secrets_command``'s JSON and WSSFLEET_SECRET_<NAME> take
precedence over the secrets file, are never written to it, and every way they can be wrong
is said (a failing command, output that is not a JSON object, a name that is no secret); a
key kept in a vault is rotated there, not by `wssfleet rotate-secret`."""

from __future__ import annotations

import json
import shlex
import sys

import pytest

from wssfleet_control import secrets


@pytest.fixture
def inventory(tmp_path, monkeypatch):
    monkeypatch.setattr(secrets, "_printed", {})
    for name in secrets.FROM_OUTSIDE:
        monkeypatch.delenv(secrets.ENVIRONMENT_PREFIX + name.upper(), raising=False)
    path = tmp_path / "production.py"
    path.write_text("# an inventory\n")
    return path


def printing(tmp_path, document) -> str:
    """A command that prints ``document`` (JSON unless a str), as a vault's CLI would."""
    text = document if isinstance(document, str) else json.dumps(document)
    # One file a document: a command's output is read once a run (secrets._printed).
    out = tmp_path / f"vault-{abs(hash(text))}.json"
    out.write_text(text)
    return shlex.join([sys.executable, "-c", f"print(open({str(out)!r}).read())"])


def test_the_commands_secrets_are_used_and_never_written_to_the_file(inventory, tmp_path):
    vault = {"jwt_secret": "the-vaults-signing-key", "redis_password": "the-vaults-password"}
    loaded = secrets.load(inventory, command=printing(tmp_path, vault))
    assert loaded["jwt_secret"] == "the-vaults-signing-key"
    assert loaded["redis_password"] == "the-vaults-password"
    # What the vault does not hold is made and kept in the file, as before; its own values
    # are not.
    written = json.loads(secrets.path_for(inventory).read_text())
    assert written.keys() == set(secrets.NAMES) - vault.keys()
    assert "the-vaults-signing-key" not in secrets.path_for(inventory).read_text()
    # The vault wins over the file for what both hold.
    again = secrets.load(inventory, command=printing(tmp_path, {"internal_key": "from-vault"}))
    assert again["internal_key"] == "from-vault"
    assert again["redis_admin_password"] == written["redis_admin_password"]


def test_the_environment_wins_over_the_command_and_the_file(inventory, tmp_path, monkeypatch):
    monkeypatch.setenv("WSSFLEET_SECRET_JWT_SECRET", "from-the-ci-runner")
    loaded = secrets.load(inventory, command=printing(tmp_path, {"jwt_secret": "vault"}))
    assert loaded["jwt_secret"] == "from-the-ci-runner"
    assert "from-the-ci-runner" not in secrets.path_for(inventory).read_text()


def test_a_vault_that_holds_every_secret_leaves_no_file(inventory, tmp_path):
    everything = {name: f"vault-{name}" for name in secrets.NAMES}
    assert secrets.load(inventory, command=printing(tmp_path, everything)) == everything
    assert not secrets.path_for(inventory).exists()


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ("false", r"secrets_command 'false' failed \(exit 1\)"),
        ("no-such-vault-cli get wssfleet", r"could not run: .*No such file"),
        ('["a list"]', r"must print one JSON object of strings"),
        ("not json", r"must print one JSON object of strings"),
        ({"jwt_secret": 42}, r"must print one JSON object of strings"),
        ({"jwt_secrt": "typo"}, r"gives jwt_secrt: a vault may give only jwt_secret, "),
    ],
)
def test_each_way_a_vault_can_be_wrong_is_said(inventory, tmp_path, command, said):
    if not isinstance(command, str) or command in ('["a list"]', "not json"):
        command = printing(tmp_path, command)
    with pytest.raises(secrets.SecretsError, match=said):
        secrets.load(inventory, command=command)
    assert not secrets.path_for(inventory).exists(), "nothing is made from a broken vault"


def test_a_signing_key_kept_in_a_vault_is_rotated_there(inventory, tmp_path):
    command = printing(tmp_path, {"jwt_secret": "the-vaults-signing-key"})
    with pytest.raises(ValueError, match="rotate it there"):
        secrets.rotate(inventory, 3600, command=command)


def test_the_command_runs_without_a_shell(inventory, tmp_path):
    pwned = tmp_path / "pwned"
    command = f"echo {{}} ; touch {pwned} $(touch {pwned}) `touch {pwned}`"
    with pytest.raises(secrets.SecretsError, match="must print one JSON object"):
        secrets.load(inventory, command=command)
    assert not pwned.exists()


def test_an_apps_secrets_come_from_the_vault_or_the_environment_too(
    inventory, tmp_path, monkeypatch
):
    """An app's Redis password (settings: apps.NAME.redis) is a secret like the others."""
    chat = "app_chat_redis_password"
    everything = {name: f"vault-{name}" for name in (*secrets.NAMES, chat)}
    loaded = secrets.load(inventory, command=printing(tmp_path, everything), more=[chat])
    assert loaded[chat] == f"vault-{chat}"
    assert not secrets.path_for(inventory).exists()
    monkeypatch.setenv("WSSFLEET_SECRET_APP_CHAT_REDIS_PASSWORD", "from-the-ci-runner")
    assert secrets.load(inventory, more=[chat])[chat] == "from-the-ci-runner"
    assert "from-the-ci-runner" not in secrets.path_for(inventory).read_text()
