"""A team's app as the fleet ships it (wssfleet_control/app_sources.py): its runtime told
from its source, a clear error for each way a source cannot be shipped, a release id that
follows the source, and a Node.js release built from the lockfile by the real npm."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from wssfleet_control.app_sources import (
    AppSourceError,
    archive,
    build,
    inspect,
    python_requirements,
    requirements_file,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def echo_node(tmp_path: Path) -> Path:
    source = tmp_path / "echo-node"
    shutil.copytree(EXAMPLES / "echo-node", source)
    return source


@pytest.mark.parametrize(
    ("example", "command", "runtime"),
    [("echo-node", "node server.js", "node"), ("echo-python", "python3 app.py", "python")],
)
def test_the_runtime_is_told_from_the_source(example, command, runtime):
    app = inspect("example", EXAMPLES / example, command)
    assert (app.runtime, app.command) == (runtime, tuple(command.split()))


def test_an_executable_in_the_source_runs_as_it_is(tmp_path):
    server = tmp_path / "server"
    server.write_text("#!/bin/sh\nexec sleep 1\n")
    server.chmod(0o755)
    assert inspect("binary", tmp_path, "./server --port {port}").runtime == "executable"


def test_a_missing_source_directory_is_named_with_the_fix(tmp_path):
    with pytest.raises(AppSourceError, match=r"apps\.chat\.source: .*/nowhere is not a directory"):
        inspect("chat", tmp_path / "nowhere", "node server.js")


def test_a_node_project_without_a_lockfile_is_refused(echo_node):
    (echo_node / "package-lock.json").unlink()
    with pytest.raises(AppSourceError, match=r"apps\.echo: .*package\.json but no package-lock"):
        inspect("echo", echo_node, "node server.js")


def test_a_source_whose_runtime_cannot_be_told_is_refused(tmp_path):
    (tmp_path / "main.go").write_text("package main\n")
    with pytest.raises(AppSourceError, match=r"cannot tell how to run .*'\./server' is not"):
        inspect("go", tmp_path, "./server")


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ("node missing.js", r"apps\.echo\.command: node runs missing\.js, which is not a file"),
        ("node", r"apps\.echo\.command: node runs nothing"),
        ("./bin/server", r"apps\.echo\.command: \./bin/server is not an executable file"),
        ("node 'server.js", r"apps\.echo\.command: No closing quotation"),
    ],
)
def test_a_command_the_release_would_not_have_is_refused(echo_node, command, said):
    with pytest.raises(AppSourceError, match=said):
        inspect("echo", echo_node, command)


def test_the_release_id_follows_the_source_and_the_command_not_what_a_build_adds(echo_node):
    first = inspect("echo", echo_node, "node server.js").release_id()
    (echo_node / "node_modules" / "ws").mkdir(parents=True)
    (echo_node / "node_modules" / "ws" / "index.js").write_text("// installed\n")
    assert inspect("echo", echo_node, "node server.js").release_id() == first
    assert inspect("echo", echo_node, "node server.js --quiet").release_id() != first
    (echo_node / "server.js").write_text((echo_node / "server.js").read_text() + "\n// edit\n")
    assert inspect("echo", echo_node, "node server.js").release_id() != first


def test_a_node_release_has_exactly_the_locked_dependencies_and_is_built_once(echo_node, tmp_path):
    (echo_node / "node_modules").mkdir()  # a developer's own install is not shipped
    (echo_node / "node_modules" / "left-behind.txt").write_text("not in the release\n")
    app = inspect("echo", echo_node, "node server.js")
    release = build(app, tmp_path / "releases")
    assert release == tmp_path / "releases" / "echo" / app.release_id()
    installed = json.loads((release / "node_modules" / ".package-lock.json").read_text())
    locked = json.loads((echo_node / "package-lock.json").read_text())
    assert installed["packages"].keys() == {k for k in locked["packages"] if k}
    assert not (release / "node_modules" / "left-behind.txt").exists()
    # Built once: a second build finds the marker and leaves the release as it is.
    (release / "node_modules" / "ws" / "package.json").unlink()
    assert build(app, tmp_path / "releases") == release
    assert not (release / "node_modules" / "ws" / "package.json").exists()


def test_a_failed_npm_install_names_the_app_and_npms_words(echo_node, tmp_path):
    # package.json asks for a package the lockfile does not have: npm ci refuses.
    package = json.loads((echo_node / "package.json").read_text())
    package["dependencies"]["ioredis"] = "5.11.1"
    (echo_node / "package.json").write_text(json.dumps(package))
    with pytest.raises(AppSourceError, match=r"(?s)apps\.echo: npm ci --omit=dev .* failed.*sync"):
        build(inspect("echo", echo_node, "node server.js"), tmp_path / "releases")


def test_a_python_apps_requirements_come_from_its_requirements_or_its_pyproject(tmp_path):
    listed = tmp_path / "listed"
    listed.mkdir()
    (listed / "app.py").write_text("print('hi')\n")
    (listed / "requirements.txt").write_text("websockets==17.4\n")
    app = inspect("listed", listed, "python app.py")
    assert python_requirements(app) == ["-r", str(listed / "requirements.txt")]
    assert requirements_file(app) == "websockets==17.4\n"
    project = tmp_path / "project"
    project.mkdir()
    (project / "main.py").write_text("print('hi')\n")
    (project / "pyproject.toml").write_text(
        '[project]\nname = "x"\nversion = "1"\ndependencies = ["websockets==17.4", "uvicorn"]\n'
    )
    app = inspect("project", project, "python main.py")
    assert app.runtime == "python"
    assert python_requirements(app) == ["websockets==17.4", "uvicorn"]
    assert requirements_file(app) == "websockets==17.4\nuvicorn\n"
    # What is uploaded: the release, packed once, root's whoever built it.
    release = build(app, tmp_path / "releases")
    packed = archive(release)
    assert archive(release) == packed
    with tarfile.open(packed) as bundle:
        members = {member.name: member for member in bundle.getmembers()}
    assert {"main.py", "pyproject.toml", ".wssfleet-built"} <= members.keys()
    assert {(member.uid, member.uname) for member in members.values()} == {(0, "root")}
