"""The Grafana dashboard (docs/grafana/wssfleet.json) imports cleanly: one Prometheus data
source chosen at import, panels that do not overlap, each query named once. That each query
has data is the lab's test (tests/e2e/test_observability.py)."""

import json

from wssfleet_control.checkout import REPO


def test_the_dashboard_imports_with_any_prometheus_and_its_panels_tile():
    dashboard = json.loads((REPO / "docs" / "grafana" / "wssfleet.json").read_text())
    [variable] = dashboard["templating"]["list"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    cells = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        references = [target["refId"] for target in panel["targets"]]
        assert references == sorted(set(references)), panel["title"]
        place = panel["gridPos"]
        assert place["x"] + place["w"] <= 24, panel["title"]
        covered = {
            (x, y)
            for x in range(place["x"], place["x"] + place["w"])
            for y in range(place["y"], place["y"] + place["h"])
        }
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
