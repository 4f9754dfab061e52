"""Hostile values in every setting and every host field are refused before any host is
touched, with a message that names the setting or the host and field."""

from __future__ import annotations

import pytest

from wssfleet_control.inventory import HOST_FIELDS, from_groups
from wssfleet_control.settings import Settings, SettingsError, resolve

HOSTILE = [
    "ops@example.com;touch${IFS}/tmp/pwned",
    "$(touch /tmp/pwned)",
    "`touch /tmp/pwned`",
    "a\nb",
    "a b",
    "x'y",
    'x"y',
    "x|y",
    "x&&y",
    "--help",
]
BASE = {"domain": "wss.example.test", "acme_server": "https://127.0.0.1:14000/dir"}


# A command line by nature, run on the operator's own machine without a shell (never on a
# host): tests/unit/test_secrets_from_outside.py shows a shell's syntax in it does nothing.
OPERATORS_COMMANDS = {"secrets_command"}


def settings_fields() -> list[str]:
    return [name for name in Settings.model_fields if name not in OPERATORS_COMMANDS]


@pytest.mark.parametrize("field", settings_fields())
def test_every_setting_refuses_hostile_values_and_names_itself(field):
    for hostile in HOSTILE:
        listed = field in ("extra_domains", "allowed_origins") or field.startswith("token_")
        value = [hostile] if listed and field != "token_max_ttl" else hostile
        if field.startswith("token_default_") and hostile == "--help":
            # A legitimate channel name: channel patterns never reach a command line.
            assert resolve({**BASE, field: value})
            continue
        with pytest.raises(SettingsError) as refused:
            resolve({**BASE, field: value})
        assert field in str(refused.value), (field, hostile, str(refused.value))


def fleet_with(worker_data: dict, worker_name: str = "worker1"):
    common = {"wssfleet_inventory": __file__, "wssfleet": BASE}
    worker = {"ssh_hostname": "10.0.0.2", **common, **worker_data}
    return from_groups(
        {
            "master": [{"name": "master", "data": {"ssh_hostname": "10.0.0.1", **common}}],
            "workers": [{"name": worker_name, "data": worker}],
            "redis": [],
        }
    )


@pytest.mark.parametrize("field", [*HOST_FIELDS, "ssh_port"])
def test_every_host_field_refuses_hostile_values_and_names_host_and_field(field):
    for hostile in HOSTILE:
        with pytest.raises(SettingsError) as refused:
            fleet_with({field: hostile})
        message = str(refused.value)
        assert message.startswith(f"host worker1: {field}="), message
        assert "is invalid: give" in message


def test_a_hostile_host_name_is_refused():
    for hostile in HOSTILE:
        with pytest.raises(SettingsError, match="give a host name"):
            fleet_with({}, worker_name=hostile)


def test_plain_values_pass():
    fleet = fleet_with(
        {
            "private_address": "192.168.1.20",
            "ssh_user": "deploy",
            "ssh_port": 2222,
            "ssh_key": "~/.ssh/id_ed25519",
            "ssh_strict_host_key_checking": "accept-new",
        }
    )
    assert fleet.workers[0].address == "192.168.1.20"
