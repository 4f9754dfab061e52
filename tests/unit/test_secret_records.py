"""Secrets that cannot fork: a deploy from a machine without the deployment's secrets file (or
with another one) stops before it touches a host, unless the secrets were replaced on purpose
(a rotation, a revoke, --replace-secrets)."""

from __future__ import annotations

import json
import time

import pytest

from wssfleet_control import secret_records, secrets
from wssfleet_control.deployment import DeployError


def deployed(tmp_path, name: str = "production.py") -> tuple:
    tmp_path.mkdir(parents=True, exist_ok=True)
    inventory = tmp_path / name
    inventory.write_text("")
    stored = secrets.load(inventory)
    return inventory, stored, json.loads(secret_records.record(stored))


def test_a_record_holds_a_fingerprint_of_each_secret_and_no_value(tmp_path):
    _, stored, record = deployed(tmp_path)
    assert sorted(record) == sorted(secrets.NAMES)
    text = json.dumps(record)
    assert not any(stored[name] in text for name in secrets.NAMES)
    # A plan before the first deploy records nothing for what does not exist yet.
    planned = json.loads(secret_records.record(dict.fromkeys(secrets.NAMES, secrets.NOT_YET)))
    assert planned == {}


def test_the_same_file_agrees_and_a_missing_or_other_one_conflicts_by_name_and_host(tmp_path):
    _, stored, record = deployed(tmp_path)
    hosts = {"master": record, "worker1": record}
    assert secret_records.conflicts(stored, hosts) == {}
    missing = dict.fromkeys(secrets.NAMES, secrets.NOT_YET)
    assert secret_records.conflicts(missing, hosts) == {
        name: ["master", "worker1"] for name in sorted(secrets.NAMES)
    }
    other = {**stored, "redis_password": "another"}
    assert secret_records.conflicts(other, hosts) == {"redis_password": ["master", "worker1"]}
    # A secret this version adds, which no host records yet, is no conflict; nor is a host
    # without a record (a first deploy).
    older = {name: value for name, value in record.items() if name != "internal_key"}
    assert secret_records.conflicts(stored, {"master": older, "worker1": {}}) == {}


def test_a_rotation_a_revoke_and_an_ended_overlap_are_not_forks(tmp_path):
    inventory, _, before = deployed(tmp_path)
    rotated = secrets.rotate(inventory, 3600)
    assert secret_records.conflicts(rotated, {"master": before}) == {}
    revoked = secrets.rotate(inventory, 3600, revoke=True)
    assert secrets.PREVIOUS not in revoked
    assert secret_records.conflicts(revoked, {"master": before}) == {}
    # Rotated, then the overlap ended before a deploy reached this host.
    again = deployed(tmp_path, "staging.py")
    staging, after_rotation = again[0], secrets.rotate(again[0], 1)
    time.sleep(1.1)
    dropped = secrets.load(staging)
    assert secrets.PREVIOUS not in dropped and after_rotation[secrets.PREVIOUS]
    assert secret_records.conflicts(dropped, {"master": again[2]}) == {}


class RecordedHosts:
    """The edge of a session: each host answers ``cat`` of its record."""

    def __init__(self, inventory, fleet_names: list[str], records: dict[str, str]) -> None:
        from types import SimpleNamespace

        nodes = [SimpleNamespace(name=name) for name in fleet_names]
        self.fleet = SimpleNamespace(
            nodes=nodes,
            inventory_path=str(inventory),
            secrets=lambda create: secrets.load(inventory, create=create),
        )
        self.records = records

    def connect(self) -> None:
        pass

    def on(self, name: str, command: str):
        from types import SimpleNamespace

        assert secret_records.SECRET_RECORD in command
        return SimpleNamespace(ok=True, stdout=self.records.get(name, ""), stderr="")


def test_a_machine_without_the_file_is_refused_and_writes_no_secrets(tmp_path):
    _, _, record = deployed(tmp_path / "first")
    second = tmp_path / "second" / "production.py"
    second.parent.mkdir()
    second.write_text("")
    records = {"master": json.dumps(record)}
    with pytest.raises(DeployError) as refused:
        secret_records.refuse_a_fork(RecordedHosts(second, ["master", "worker1"], records))
    message = str(refused.value)
    assert str(secrets.path_for(second)) in message and "does not exist" in message
    assert "jwt_secret on master" in message and "--replace-secrets" in message
    assert not secrets.path_for(second).exists()
    # The same file on the first machine goes on.
    first = tmp_path / "first" / "production.py"
    secret_records.refuse_a_fork(RecordedHosts(first, ["master", "worker1"], records))


def test_an_unreadable_record_is_named(tmp_path):
    inventory, _, _ = deployed(tmp_path)
    session = RecordedHosts(inventory, ["master"], {"master": "{not json"})
    with pytest.raises(DeployError, match="on master is not JSON"):
        secret_records.refuse_a_fork(session)
