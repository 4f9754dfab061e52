"""The tests' own loopback ports: a test that starts a service and its metrics listener asks for
two ports in a row, and a CI run once got the same one twice (the metrics port then served the
service's /healthz)."""

from tests import processes

# Just above TEST_PORTS: no other test worker hands these out.
PORTS = range(32000, 32008)


def test_ports_handed_out_in_a_row_are_all_different_until_the_share_is_used_up(monkeypatch):
    monkeypatch.setattr(processes, "TEST_PORTS", PORTS)
    monkeypatch.setattr(processes, "_handed_out", set())
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "1")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    first_round = [processes.free_port() for _ in range(8)]
    assert sorted(first_round) == list(PORTS)
    # Once every port of the share is handed out, the share is used again.
    assert processes.free_port() in PORTS
