"""The private CA's renewal between deploys: cron on each master swaps in the next
certificate the deploy left, once it is valid, and leaves HAProxy alone otherwise. Real
certificates and openssl; no HAProxy (its PEM is written as for one that is not running)."""

from __future__ import annotations

import importlib

import pytest

import wssfleet_control.hostside  # noqa: F401  (the helpers import each other as on a host)
from tests.own_ca import OwnCA

provided_renewal = importlib.import_module("provided_renewal")
haproxy_runtime = importlib.import_module("haproxy_runtime")

NAMES = ["wss.example.test"]


@pytest.fixture
def served(tmp_path, monkeypatch):
    """HAProxy's PEM, serving a current certificate."""
    path = tmp_path / "wssfleet.pem"
    chain, key = OwnCA().issue(NAMES)
    path.write_text(chain + key)
    monkeypatch.setattr(provided_renewal, "HAPROXY_CERTIFICATE", str(path))
    monkeypatch.setattr(haproxy_runtime, "HAPROXY_CERTIFICATE", str(path))
    monkeypatch.setattr(haproxy_runtime, "ADMIN_SOCKET", str(tmp_path / "no-haproxy.sock"))
    monkeypatch.setattr(haproxy_runtime, "TEXTFILE_DIRECTORY", str(tmp_path / "textfiles"))
    return path


def successor(tmp_path, starts_in_days: float) -> tuple[str, str]:
    directory = tmp_path / "next"
    directory.mkdir()
    chain, key = OwnCA().issue(NAMES, starts_in_days=starts_in_days)
    (directory / "fullchain.pem").write_text(chain)
    (directory / "privkey.pem").write_text(key)
    return str(directory), chain


def test_a_successor_not_valid_yet_leaves_the_served_one(served, tmp_path):
    before = served.read_text()
    directory, _ = successor(tmp_path, starts_in_days=2)
    assert provided_renewal.renew(directory) == 0
    assert served.read_text() == before


def test_a_valid_successor_is_swapped_in_once(served, tmp_path):
    directory, chain = successor(tmp_path, starts_in_days=-0.01)
    assert provided_renewal.renew(directory) == 0
    assert served.read_text().startswith(chain.strip())
    written = served.read_text()
    # The next run finds it served and changes nothing.
    assert provided_renewal.renew(directory) == 0
    assert served.read_text() == written


def test_no_successor_is_nothing_to_do(served, tmp_path):
    before = served.read_text()
    assert provided_renewal.renew(str(tmp_path / "absent")) == 0
    assert served.read_text() == before
