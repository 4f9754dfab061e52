"""The deploy and the service share one schema: what the deploy renders into a worker's
environment file is what the service reads back, and only the service makes a release."""

from __future__ import annotations

import shlex
import shutil

import jinja2
import pytest

from roles.instances import systemd_quoted
from roles.workers import PER_INSTANCE, service_config
from wssfleet import config as wssfleet_config
from wssfleet_control import release
from wssfleet_control.checkout import REPO
from wssfleet_control.deployment import DeployRun
from wssfleet_control.inventory import from_groups
from wssfleet_control.settings import markdown_table


def fleet(**settings):
    common = {
        "wssfleet_inventory": __file__,
        "wssfleet": {
            "domain": "wss.example.test",
            "acme_server": "https://127.0.0.1:14000/dir",
            **settings,
        },
    }
    return from_groups(
        {
            "master": [{"name": "m", "data": {"ssh_hostname": "127.0.0.10", **common}}],
            "workers": [{"name": "w1", "data": {"ssh_hostname": "127.0.0.11", **common}}],
        }
    )


def read_environment_file(text: str) -> dict[str, str]:
    """KEY="value" lines as systemd reads them (comments skipped, quotes and escapes undone)."""
    values = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, quoted = line.partition("=")
            values[name] = shlex.split(quoted)[0]
    return values


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"allowed_origins": ["https://a.example.com", "http://localhost:3000"], "ping_timeout": 7},
    ],
)
def test_the_environment_file_reads_back_as_the_config_the_deploy_meant(overrides):
    deployment = fleet(**overrides)
    secrets = {
        "jwt_secret": 'a secret with "quotes" and \\ and spaces, 32+ bytes',
        "redis_password": "pw",
        "internal_key": "the rebalancer's key",
        "canary_key": "the canaries' key",
    }
    run = DeployRun(fleet=deployment, secrets=secrets, dry=True, release="test")
    meant = service_config(run, deployment.workers[0])
    template = jinja2.Environment(
        loader=jinja2.FileSystemLoader(REPO / "templates"), keep_trailing_newline=True
    ).get_template("workers/wssfleet.env.j2")
    environment = meant.environment(exclude=PER_INSTANCE)
    rendered = template.render(
        environment={name: systemd_quoted(value) for name, value in environment.items()}
    )
    read = wssfleet_config.load({**read_environment_file(rendered), "WSSFLEET_PORT": "8001"})
    assert read == meant.model_copy(update={"port": 8001})
    assert read.allowed_origins == deployment.settings.origins
    assert read.redis_url == "redis://wssfleet:pw@127.0.0.10:6379/0"
    assert read.ping_timeout == deployment.settings.ping_timeout


def test_a_client_setting_is_checked_by_the_one_rule_the_service_also_uses():
    from wssfleet_control.settings import SettingsError

    with pytest.raises(SettingsError, match="each origin is scheme://host"):
        fleet(allowed_origins=["example.com"])
    with pytest.raises(wssfleet_config.ConfigError, match="each origin is scheme://host"):
        wssfleet_config.load(
            {"WSSFLEET_JWT_SECRET": "x" * 32, "WSSFLEET_ALLOWED_ORIGINS": "example.com"}
        )


def test_only_the_service_source_names_a_release(tmp_path, monkeypatch):
    copy = tmp_path / "service"
    shutil.copytree(release.SERVICE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(release, "SERVICE", copy)
    release.release_id.cache_clear()
    try:
        first = release.release_id()
        (copy / "wssfleet" / "__pycache__").mkdir(exist_ok=True)
        (copy / "wssfleet" / "__pycache__" / "x.pyc").write_bytes(b"cache")
        assert release.release_id.__wrapped__() == first
        module = copy / "wssfleet" / "protocol.py"
        module.write_text(module.read_text() + "\n# a change\n")
        assert release.release_id.__wrapped__() != first
    finally:
        release.release_id.cache_clear()


def test_the_documented_settings_table_is_the_schema():
    readme = (REPO / "docs" / "settings.md").read_text()
    assert markdown_table().strip() in readme, "regenerate it: wssfleet settings"
