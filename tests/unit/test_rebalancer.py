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
