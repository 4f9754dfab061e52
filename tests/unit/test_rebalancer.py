"""The rebalancer's decision: who sheds how many clients, within the fleet-wide budget."""

from __future__ import annotations

import pytest

from wssfleet_control.hostside.rebalancer import plan


def test_a_fleet_within_the_tolerance_is_left_alone():
    assert plan({"a": 260, "b": 240, "c": 250, "d": 250}, 0.2, 40) == {}


def test_the_fullest_shed_down_to_the_mean_within_the_budget():
    # One instance came back empty: the mean is 250.
    counts = {"a": 0, "b": 333, "c": 334, "d": 333}
    assert plan(counts, 0.2, 40) == {"c": 40}
    assert plan(counts, 0.2, 1000) == {"c": 84, "b": 83, "d": 83}


@pytest.mark.parametrize("counts", [{}, {"a": 100}, {"a": 0, "b": 0}])
def test_nothing_to_even_out(counts):
    assert plan(counts, 0.2, 40) == {}


def test_a_setting_missing_from_the_environment_and_an_unreadable_file_is_empty(
    monkeypatch, tmp_path
):
    # The rebalancer runs unprivileged: its environment file is root's, not its own to read.
    from wssfleet_control.hostside import haproxy_runtime

    monkeypatch.setattr(haproxy_runtime, "REBALANCER_ENVIRONMENT", str(tmp_path / "unreadable"))
    monkeypatch.setenv("WSSFLEET_INTERNAL_KEY", "k")
    monkeypatch.delenv("WSSFLEET_INTERNAL_CA", raising=False)
    assert haproxy_runtime.internal_setting("WSSFLEET_INTERNAL_KEY") == "k"
    assert haproxy_runtime.internal_setting("WSSFLEET_INTERNAL_CA") == ""
