"""Facts the roles decide from, read from the output a host gives (no host needed)."""

from __future__ import annotations

from wssfleet_control.facts import LoadedUnits


def test_loaded_units_are_named_whatever_their_state_and_marker():
    output = [
        "wssfleet@8001.service loaded active running wssfleet WebSocket service on port 8001",
        "● wssfleet@8003.service loaded failed failed wssfleet WebSocket service on port 8003",
        "wssfleet@8002.service loaded inactive dead wssfleet WebSocket service on port 8002",
        "",
    ]
    assert LoadedUnits().process(output) == {
        "wssfleet@8001.service",
        "wssfleet@8002.service",
        "wssfleet@8003.service",
    }
    assert LoadedUnits().process([]) == set() == LoadedUnits.default()
    assert LoadedUnits().command("wssfleet@*") == (
        "systemctl list-units --all --plain --no-legend --full 'wssfleet@*'"
    )
