"""The CLI as scripts use it: exit codes, --version, -i everywhere, one place to name the
deployment, and no lab built behind an operator's back."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lab import core
from lab.config import LabSettings
from tests.unit.helpers import control_cli, inherited_environment
from wssfleet_control.checkout import REPO

VALID = (
    "master = [('m', {'ssh_hostname': '127.0.0.10'})]\n"
    "workers = [('w', {'ssh_hostname': '127.0.0.11'})]\n"
    "all = (['m', 'w'], {'wssfleet_inventory': __file__, "
    "'wssfleet': {'domain': 'ws.example.com', 'acme_server': 'letsencrypt', "
    "'acme_email': 'ops@example.com'}})\n"
)


wssfleet = control_cli


@pytest.fixture
def inventory(tmp_path):
    path = tmp_path / "staging.py"
    path.write_text(VALID)
    return path


def test_version():
    result = wssfleet("--version")
    assert result.returncode == 0 and result.stdout.startswith("wssfleet, version "), result


def test_check_takes_i_like_every_command_and_the_argument_still_works(inventory):
    for arguments in (["check", "-i", str(inventory)], ["check", str(inventory)]):
        result = wssfleet(*arguments)
        assert result.returncode == 0, result.stderr
        assert "m (master+redis+monitoring), w (workers)" in result.stdout


def test_invalid_settings_exit_3_with_the_reason_and_no_usage_banner(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(VALID.replace("'acme_email': 'ops@example.com'", "'acme_email': ''"))
    result = wssfleet("check", "-i", str(path))
    assert result.returncode == 3, result
    assert f"Error: {path}: setting acme_email is required" in result.stderr, result.stderr
    assert "Usage:" not in result.stderr
    missing = wssfleet("check", "-i", str(tmp_path / "nowhere.py"))
    assert missing.returncode == 3 and "does not exist" in missing.stderr
    # A wrong command line stays a usage error (2).
    assert wssfleet("check", "--no-such-option").returncode == 2


def test_a_dns_name_as_the_only_address_is_refused_before_it_reaches_a_host(tmp_path):
    path = tmp_path / "named.py"
    path.write_text(VALID.replace("'127.0.0.11'", "'ws1.example.com'"))
    result = wssfleet("check", "-i", str(path))
    assert result.returncode == 3, result
    assert "host w: its address comes from ssh_hostname ('ws1.example.com')" in result.stderr
    assert "give private_address" in result.stderr
    path.write_text(
        VALID.replace("'127.0.0.11'}", "'ws1.example.com', 'private_address': '10.0.0.11'}")
    )
    assert wssfleet("check", "-i", str(path)).returncode == 0


# The CLI with its project file moved to argv[1]: the checkout's own wssfleet.toml is never
# written, since tests run in parallel against it.
WITH_PROJECT_FILE = (
    "import sys; from pathlib import Path; from wssfleet_control import cli; "
    "cli.PROJECT_FILE = Path(sys.argv[1]); cli.main(sys.argv[2:], prog_name='wssfleet')"
)


def test_the_deployment_is_named_once_by_environment_or_project_file(inventory, tmp_path):
    by_environment = wssfleet("check", WSSFLEET_INVENTORY=str(inventory))
    assert by_environment.returncode == 0, by_environment.stderr
    assert f"{inventory} is valid" in by_environment.stdout
    project_file = tmp_path / "wssfleet.toml"

    def check(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", WITH_PROJECT_FILE, str(project_file), "check", *arguments],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            env=inherited_environment(),
        )

    project_file.write_text(f'inventory = "{inventory}"\n')
    by_file = check()
    assert by_file.returncode == 0 and f"{inventory} is valid" in by_file.stdout, by_file
    project_file.write_text('inventory = ["not", "a", "path"]\n')
    broken = check()
    assert broken.returncode == 3, broken
    assert "wssfleet.toml: give the deployment's inventory" in broken.stderr
    # An inventory given as the argument does not depend on the project file.
    explicit = check(str(inventory))
    assert explicit.returncode == 0, explicit


@pytest.mark.parametrize("command", ["status", "verify", "renew", "plan", "rollback"])
def test_no_command_but_deploy_builds_the_lab(command):
    if core.is_up(core.load_state(), LabSettings.from_environment()):
        pytest.skip("the lab is up here: the refusal shows only when it is not")
    result = wssfleet(command, "-i", "inventory/lab.py")
    assert result.returncode == 1, result
    assert "the lab is not up: 'make deploy' builds and deploys it" in result.stderr
    assert not core.is_up(core.load_state(), LabSettings.from_environment())
    assert "copying the base" not in result.stdout + result.stderr


def planned_recipes(*arguments: str) -> str:
    """What `make` would run for these arguments (every recipe, as if nothing were built)."""
    env = inherited_environment()
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_deploying_your_own_servers_installs_none_of_the_labs_tools():
    own = planned_recipes("deploy", "INVENTORY=inventory/production.example.py")
    assert "wssfleet deploy -i inventory/production.example.py" in own, own
    for lab_tool in ("debootstrap", "systemd-container", "chromium", "pebble", "promtool"):
        assert lab_tool not in own, f"{lab_tool} in the plan of a production deploy:\n{own}"
    # The lab's deploy does install them: the check above can fail.
    lab = planned_recipes("deploy", "INVENTORY=inventory/lab.py")
    assert "debootstrap" in lab and "pebble" in lab, lab


@pytest.mark.parametrize("command", ["status", "plan", "deploy"])
def test_a_fleet_where_no_host_answers_is_reported_in_one_document(tmp_path, command):
    """pyinfra ends with "No hosts remaining!" when every host fails to connect: a report of
    the hosts SSH did not reach, never that traceback, and no secrets made."""
    import json

    path = tmp_path / "gone.py"
    # Closed ports on loopback: refused at once.
    path.write_text(
        VALID.replace("'127.0.0.10'}", "'127.0.0.10', 'ssh_port': 1}").replace(
            "'127.0.0.11'}", "'127.0.0.11', 'ssh_port': 1}"
        )
    )
    result = wssfleet(command, "--json", "-i", str(path))
    # status could not look at anything (4); plan and deploy failed (1).
    assert result.returncode == (4 if command == "status" else 1), result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    report = json.loads(result.stdout)
    said = json.dumps(report)
    assert "m" in said and ("cannot reach m, w" in said or "m: does not answer" in said), said
    assert not (tmp_path / ".secrets").exists()


def test_check_hosts_reports_hosts_that_do_not_answer_and_could_not_look(tmp_path):
    import json

    path = tmp_path / "gone.py"
    path.write_text(
        VALID.replace("'127.0.0.10'}", "'127.0.0.10', 'ssh_port': 1}").replace(
            "'127.0.0.11'}", "'127.0.0.11', 'ssh_port': 1}"
        )
    )
    result = wssfleet("check", "--hosts", "--json", "-i", str(path))
    assert result.returncode == 4, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    findings = json.loads(result.stdout)["findings"]
    assert [(f["subject"], f["check"], f["outcome"]) for f in findings[:2]] == [
        ("m", "ssh", "problem"),
        ("w", "ssh", "problem"),
    ], findings


def test_a_missing_key_file_is_said_for_its_host_alone(tmp_path):
    """pyinfra's connector raised inside its greenlet for a key file it could not load: a
    traceback for each host, and the hosts after it never tried. Now each host's reason."""
    import json

    path = tmp_path / "keyless.py"
    path.write_text(
        VALID.replace("'127.0.0.10'}", f"'127.0.0.10', 'ssh_key': '{tmp_path}/gone_id'}}").replace(
            "'127.0.0.11'}", "'127.0.0.11', 'ssh_port': 1}"
        )
    )
    result = wssfleet("status", "--json", "-i", str(path))
    assert result.returncode == 4, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    problems = json.loads(result.stdout)["problems"]
    assert f"m: its ssh_key {tmp_path}/gone_id does not exist on this machine" in problems
    assert "w: does not answer over SSH" in problems


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("redis = ['m9']\n", "group 'redis' names 'm9', which is no host of the inventory (m, w)"),
        ("monitoring = ['w9']\n", "group 'monitoring' names 'w9', which is no host"),
    ],
)
def test_a_typo_in_a_group_is_refused_not_dropped(tmp_path, line, named):
    # pyinfra leaves the unknown name out of the group, and Redis or Prometheus would land
    # on the master without a word.
    path = tmp_path / "typo.py"
    path.write_text(VALID + line)
    result = wssfleet("check", "-i", str(path))
    assert result.returncode == 3 and named in result.stderr, result.stderr


def test_an_ssh_setting_pyinfra_does_not_know_is_refused(tmp_path):
    path = tmp_path / "typo.py"
    path.write_text(VALID.replace("'127.0.0.11'}", "'127.0.0.11', 'ssh_usr': 'deploy'}"))
    result = wssfleet("check", "-i", str(path))
    assert result.returncode == 3, result.stderr
    assert "host w: ssh_usr is no SSH setting pyinfra knows: use ssh_allow_agent" in result.stderr


def test_verify_speaks_wssfleets_exit_codes_not_pytests(inventory):
    # No check selected: pytest's 5 ("no tests ran") is wssfleet's 4, the checks did not run.
    result = wssfleet("verify", "-i", str(inventory), "--", "-k", "no_check_has_this_name")
    assert result.returncode == 4, result.stdout[-2000:] + result.stderr[-2000:]


def test_config_prints_the_resolved_settings_and_their_schema(inventory):
    import json

    from tests.unit.helpers import PEBBLE
    from wssfleet_control.settings import resolve

    resolved = json.loads(wssfleet("config", "-i", str(inventory)).stdout)
    assert resolved["domain"] == "ws.example.com"
    # Every default filled in, as a deploy sees it.
    assert resolved["drain_seconds"] == resolve(PEBBLE).drain_seconds
    schema = json.loads(wssfleet("config", "--schema").stdout)
    assert schema["additionalProperties"] is False
    assert set(resolved) == set(schema["properties"])


@pytest.mark.parametrize("command", [("logs", "nosuch"), ("ssh", "nosuch")])
def test_logs_and_ssh_name_the_hosts_and_roles_there_are(inventory, command):
    result = wssfleet(command[0], "-i", str(inventory), *command[1:])
    assert result.returncode == 2, result.stderr
    assert "nosuch" in result.stderr and "hosts: m, w" in result.stderr, result.stderr
