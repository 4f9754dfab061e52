"""The docs name only what exists: every `make` target and `wssfleet` command they mention,
every setting they give a value to, and a runbook entry for every alert (each alert links to
its own)."""

from __future__ import annotations

import re

import pytest

from tests.unit.helpers import control_cli
from wssfleet_control.checkout import REPO
from wssfleet_control.settings import Settings

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RULES = REPO / "templates" / "monitoring" / "wssfleet-rules.yml.j2"
RUNBOOKS = REPO / "docs" / "runbooks.md"


def text() -> str:
    return "\n".join(doc.read_text() for doc in DOCS)


def make_targets() -> set[str]:
    makefile = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([a-z0-9-]+):", makefile, re.MULTILINE))


def test_every_make_target_the_docs_mention_exists():
    mentioned = set(re.findall(r"`make ([a-z0-9-]+)", text()))
    assert mentioned, "the docs mention no make target: the pattern is wrong"
    assert mentioned - make_targets() == set()


def test_every_wssfleet_command_the_docs_mention_exists():
    mentioned = set(re.findall(r"wssfleet ([a-z][a-z-]+)\b", text()))
    listed = control_cli("--help").stdout.split("Commands:", 1)[1]
    commands = set(re.findall(r"^  ([a-z][a-z-]+)", listed, re.MULTILINE))
    assert {"deploy", "status", "check"} <= commands, listed
    # Words after "wssfleet" that are not commands: the product's name in prose.
    prose = {word for word in mentioned if word not in commands}
    commands_in_code = set(re.findall(r"`(?:\.venv/bin/)?wssfleet ([a-z][a-z-]+)", text()))
    assert commands_in_code, "the docs mention no wssfleet command: the pattern is wrong"
    assert commands_in_code - commands == set(), prose


def test_every_setting_given_a_value_in_the_docs_exists():
    given = set(re.findall(r"`([a-z][a-z0-9_]+)(?::|=)\s*[^`]*`", text()))
    settings = set(Settings.model_fields)
    # Only the names that look like settings: lower_snake_case with one underscore or more.
    candidates = {name for name in given if "_" in name}
    unknown = sorted(candidates - settings - {"ssh_user", "ssh_hostname", "private_address"})
    assert unknown == []


def alerts() -> list[str]:
    return re.findall(r"- alert: (\w+)", RULES.read_text())


def test_every_alert_has_a_runbook_entry_and_links_to_it():
    headings = re.findall(r"^## (\w+)$", RUNBOOKS.read_text(), re.MULTILINE)
    assert sorted(headings) == sorted(alerts())
    rules = RULES.read_text()
    for name in alerts():
        block = rules.split(f"- alert: {name}\n", 1)[1].split("- alert:", 1)[0]
        assert f'runbook: "docs/runbooks.md#{name.lower()}"' in block, name


@pytest.mark.parametrize("anchor", re.findall(r"\]\(#([a-z0-9-]+)\)", RUNBOOKS.read_text()))
def test_runbook_links_within_the_page_resolve(anchor):
    headings = re.findall(r"^## (\w+)$", RUNBOOKS.read_text(), re.MULTILINE)
    assert anchor in {heading.lower() for heading in headings}


def anchors(path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(), re.MULTILINE)
    return {re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_link_between_the_docs_resolves():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            if not linked.exists():
                broken.append(f"{doc.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{doc.name}: {target} (no such heading)")
    assert broken == []


def test_the_port_table_gives_every_port_the_firewall_opens_with_its_default():
    from wssfleet_control.hostside import layout

    table = (REPO / "docs" / "security.md").read_text().split("**Ports, for a cloud")[1]
    table = table.split("\n\n")[1]
    defaults = Settings.model_fields
    ports = {
        "CERTBOT_PORT": layout.CERTBOT_PORT,
        "HAPROXY_PEERS_PORT": layout.HAPROXY_PEERS_PORT,
        "NODE_EXPORTER_PORT": layout.NODE_EXPORTER_PORT,
        "REDIS_EXPORTER_PORT": layout.REDIS_EXPORTER_PORT,
        "HAPROXY_METRICS_PORT": layout.HAPROXY_METRICS_PORT,
        "PROMETHEUS_PORT": layout.PROMETHEUS_PORT,
        **{name: defaults[name].default for name in ("redis_port", "redis_sentinel_port")},
        "worker_base_port": defaults["worker_base_port"].default,
    }
    rows = {row.split("|")[1].strip() for row in table.splitlines()[2:]}
    missing = {
        name: port for name, port in ports.items() if not any(str(port) in row for row in rows)
    }
    assert not missing, f"docs/security.md's port table lacks {missing}"
    for setting in ("redis_port", "redis_sentinel_port", "worker_base_port"):
        assert f"`{setting}` ({ports[setting]})" in table, setting
