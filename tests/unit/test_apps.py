"""The team's own apps (settings: apps) before any host is touched: the settings refuse what
cannot work and say how to fix it, the inventory inspects each source, the unit starts the
command from the release, and a real HAProxy routes each app's path and domain to its own
backend and everything else to the built-in service."""

from __future__ import annotations

import contextlib
import http.server
import re
import shutil
import socket
import subprocess
import threading

import pytest

from roles.haproxy import AppBackend, Backend
from tests.processes import free_port, wait_for_port
from tests.unit.helpers import PEBBLE, control_cli, rendered_haproxy
from wssfleet_control.app_sources import AppSource
from wssfleet_control.checkout import REPO
from wssfleet_control.settings import SettingsError, app_markdown_table, resolve

EXAMPLES = REPO / "examples"
CHAT = {"source": "chat", "command": "node server.js", "path": "/chat", "port": 8111}


def settings_with(**apps):
    return resolve({**PEBBLE, "apps": apps})


def refusal(**apps) -> str:
    with pytest.raises(SettingsError) as refused:
        settings_with(**apps)
    return str(refused.value)


def test_an_app_gets_its_ports_its_route_and_its_domain_on_the_certificate():
    settings = settings_with(
        chat={**CHAT, "instances": 2},
        echo={**CHAT, "path": None, "domain": "echo.example.test", "port": 8121},
    )
    assert settings.apps["chat"].ports() == [8111, 8112]
    assert settings.domains == ["wss.example.test", "echo.example.test"]


@pytest.mark.parametrize(
    ("apps", "said"),
    [
        (
            {"chat": CHAT, "chat2": {**CHAT, "port": 8121}},
            "settings apps.chat and apps.chat2 both route /chat on the fleet domain: give each "
            "its own path or domain",
        ),
        (
            {"chat": {**CHAT, "port": 8002}},
            "setting apps.chat.port=8002 (with instances=1) takes port 8002, which the built-in "
            "service uses",
        ),
        (
            {"chat": {**CHAT, "instances": 2}, "echo": {**CHAT, "path": "/echo", "port": 8112}},
            "setting apps.echo.port=8112 (with instances=1) takes port 8112, which app chat uses",
        ),
        ({"chat": {**CHAT, "port": 6379}}, "takes port 6379, which Redis uses"),
        ({"chat": {**CHAT, "path": "/ws"}}, "apps.chat.path='/ws' is the built-in service's"),
        ({"chat": {**CHAT, "path": "/ws/room"}}, "is the built-in service's"),
        ({"chat": {**CHAT, "path": None}}, "apps.chat is invalid: give path (like /chat)"),
        ({"chat": {**CHAT, "path": "/chat/"}}, "apps.chat.path='/chat/' is invalid: give a path"),
        ({"chat": {**CHAT, "port": "8111"}}, "apps.chat.port='8111' is invalid: give a whole"),
        ({"chat": {k: v for k, v in CHAT.items() if k != "port"}}, "apps.chat.port is required"),
        ({"chat": {**CHAT, "prot": 1}}, "apps.chat.prot is unknown: did you mean 'port'?"),
        ({"chat": {**CHAT, "env": {"REDIS_URL": "x"}}}, "REDIS_URL is set by the fleet"),
        ({"chat": {**CHAT, "env": {"A": "1\n2"}}}, "A's value spans lines"),
        ({"Chat": CHAT}, "app name 'Chat': give 1 to 20 lower-case letters"),
        ({"wssfleet": CHAT}, "not 'wssfleet', the built-in service's"),
        ({"chat": "node server.js"}, "apps.chat is invalid: give a dict of its settings"),
    ],
)
def test_a_bad_app_setting_is_refused_with_the_fix(apps, said):
    assert said in refusal(**apps)


def test_check_inspects_each_apps_source_and_workers_before_any_host(tmp_path):
    shutil.copytree(EXAMPLES / "echo-node", tmp_path / "echo")
    inventory = tmp_path / "staging.py"

    def check(app: dict) -> subprocess.CompletedProcess:
        inventory.write_text(
            "master = [('m', {'ssh_hostname': '127.0.0.10'})]\n"
            "workers = [('w', {'ssh_hostname': '127.0.0.11'})]\n"
            "all = (['m', 'w'], {'wssfleet_inventory': __file__, 'wssfleet': {"
            "'domain': 'ws.example.com', 'acme_server': 'https://127.0.0.1:14000/dir', "
            f"'apps': {{'echo': {app!r}}}}}}})\n"
        )
        return control_cli("check", "-i", str(inventory))

    app = {"source": "echo", "command": "node server.js", "path": "/echo", "port": 8101}
    assert check(app).returncode == 0, check(app).stderr
    missing = check({**app, "source": "nowhere"})
    assert missing.returncode == 3
    assert "apps.echo.source: " in missing.stderr and "is not a directory" in missing.stderr
    (tmp_path / "echo" / "package-lock.json").unlink()
    unlocked = check(app)
    assert unlocked.returncode == 3 and "has package.json but no package-lock.json" in (
        unlocked.stderr
    )
    strangers = check({**app, "workers": ["w", "w9"]})
    assert "setting apps.echo.workers names w9, not in group 'workers' (w)" in strangers.stderr


@pytest.mark.parametrize(
    ("runtime", "command", "exec_start"),
    [
        ("node", ("node", "server.js", "--port", "{port}"), "/usr/bin/node server.js --port %i"),
        ("python", ("python3", "app.py"), "/opt/a/current/venv/bin/python app.py"),
        ("python", ("uvicorn", "app:app"), "/opt/a/current/venv/bin/uvicorn app:app"),
        ("executable", ("./server", "50%", "$HOME"), "/opt/a/current/server 50%% $$HOME"),
        ("executable", ("bin/run", "a b"), '/opt/a/current/bin/run "a b"'),
    ],
)
def test_the_unit_starts_the_command_from_the_release_as_written(runtime, command, exec_start):
    from roles.apps import exec_start as unit_exec_start

    source = AppSource("a", REPO, command, runtime)
    assert unit_exec_start(source, "/opt/a/current") == exec_start


class Named(http.server.BaseHTTPRequestHandler):
    """Answers every request with the name of the server it reached."""

    def do_GET(self) -> None:
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *arguments) -> None:
        pass


def named_server(name: str) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Named)
    server.name = name  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@contextlib.contextmanager
def routing_haproxy(tmp_path, settings, servers: dict[str, list[str]]):
    """A real HAProxy running the rendered routes, admission-free, and the rendered backends
    of the built-in service and each app, whose servers are named HTTP servers (``servers``:
    the names of each app's; "service" for the built-in one): its port."""
    every = {name for names in servers.values() for name in names} | {"service"}
    running = {name: named_server(name) for name in every}
    port_of = {name: server.server_address[1] for name, server in running.items()}
    app_backends = [
        AppBackend(
            name,
            app,
            [
                Backend(f"w-{port_of[server]}", "127.0.0.1", port_of[server])
                for server in servers[name]
            ],
        )
        for name, app in settings.apps.items()
    ]
    service = [Backend("w-1", "127.0.0.1", port_of["service"])]
    rendered = rendered_haproxy(
        service, tmp_path / "cert.pem", settings=settings, app_backends=app_backends
    )
    frontend = rendered.split("frontend https\n", 1)[1].split("\n\n", 1)[0].splitlines()
    routing = [
        line
        for line in frontend
        if line.strip().startswith(("use_backend", "default_", "http-request deny"))
    ]
    backends = [
        "\n".join(line for line in section.splitlines() if line.strip() and line[0] != "#")
        for section in re.split(r"\n(?=[a-z]+ )", rendered)
        if section.startswith("backend ") and not section.startswith("backend certbot")
    ]
    port = free_port()
    config = tmp_path / "routing.cfg"
    config.write_text(
        "defaults\n    mode http\n    timeout client 5s\n    timeout connect 5s\n"
        f"    timeout server 5s\nfrontend https\n    bind 127.0.0.1:{port}\n"
        + "\n".join(routing)
        + "\n\n"
        + "\n\n".join(backends)
        + "\n"
    )
    checked = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stderr=subprocess.PIPE)
    try:
        wait_for_port(port)
        yield port
    finally:
        haproxy.terminate()
        haproxy.wait(timeout=10)
        for server in running.values():
            server.shutdown()


def ask(port: int, path: str, host: str = "wss.example.test", *headers: str) -> tuple[str, str]:
    """HAProxy's answer to GET ``path``: its head, and its body (which server answered)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as link:
        extra = "".join(f"{header}\r\n" for header in headers)
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
        link.sendall(request.encode())
        answer = b"".join(iter(lambda: link.recv(4096), b"")).decode()
    head, _, body = answer.partition("\r\n\r\n")
    return head, body


def test_a_real_haproxy_routes_each_apps_path_and_domain_and_the_rest_to_the_service(tmp_path):
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is missing: run 'make tools'")
    settings = settings_with(
        chat={**CHAT, "health_path": "/healthz", "drain_path": "/chat/drain"},
        echo={
            **CHAT,
            "path": None,
            "domain": "echo.example.test",
            "port": 8121,
            "metrics_path": "/metrics",
            "drain_path": "/drain",
        },
        **{"echo-room": {**CHAT, "path": "/room", "domain": "echo.example.test", "port": 8131}},
    )
    servers = {name: [name] for name in settings.apps}
    with routing_haproxy(tmp_path, settings, servers) as port:

        def reached(path: str, host: str = "wss.example.test") -> str:
            head, body = ask(port, path, host)
            return body if " 200 " in head.split("\r\n")[0] else head.split("\r\n")[0]

        seen = {
            "/chat": reached("/chat"),
            "/chat/x?y": reached("/chat/x?y"),
            "/chatty": reached("/chatty"),
            "/ws": reached("/ws"),
            "echo /": reached("/", "echo.example.test"),
            "echo /chat": reached("/chat", "Echo.Example.Test:443"),
            "echo /room/1": reached("/room/1", "echo.example.test"),
            "echo /metrics": reached("/metrics", "echo.example.test"),
            "/chat/drain": reached("/chat/drain"),
            "echo /drain": reached("/drain", "echo.example.test"),
            "other /room/1": reached("/room/1"),
        }
    assert seen == {
        "/chat": "chat",
        "/chat/x?y": "chat",
        "/chatty": "service",
        "/ws": "service",
        "echo /": "echo",
        # A name's own app takes every path on it, except a name and path more specific.
        "echo /chat": "echo",
        "echo /room/1": "echo-room",
        # An app's metrics are for the monitoring hosts, never for clients.
        "echo /metrics": "HTTP/1.1 404 Not Found",
        # Nor its drain path: the rollout asks for it from the worker itself.
        "/chat/drain": "HTTP/1.1 404 Not Found",
        "echo /drain": "HTTP/1.1 404 Not Found",
        "other /room/1": "service",
    }


def test_a_sticky_app_sends_a_client_back_to_its_instance(tmp_path):
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is missing: run 'make tools'")
    settings = settings_with(chat={**CHAT, "sticky": True, "timeout_tunnel": "2h"})
    with routing_haproxy(tmp_path, settings, {"chat": ["chat-a", "chat-b"]}) as port:
        head, first = ask(port, "/chat")
        cookie = next(
            line.split(":", 1)[1].strip().split(";")[0]
            for line in head.split("\r\n")
            if line.lower().startswith("set-cookie:")
        )
        assert cookie.startswith("wssfleet_chat=w-"), head
        again = {ask(port, "/chat", "wss.example.test", f"Cookie: {cookie}")[1] for _ in range(6)}
        # Without the cookie, leastconn alternates between the two.
        plain = {ask(port, "/chat")[1] for _ in range(6)}
    assert again == {first}
    assert plain == {"chat-a", "chat-b"}
    rendered = rendered_haproxy(
        [], tmp_path / "cert.pem", settings=settings, app_backends=[
            AppBackend("chat", settings.apps["chat"], [Backend("w-1", "127.0.0.1", 1)])
        ]
    )  # fmt: skip
    assert "    timeout tunnel 2h\n" in rendered


def test_docs_apps_lists_every_setting_of_an_app():
    assert app_markdown_table() in (REPO / "docs" / "apps.md").read_text(), (
        "regenerate it: wssfleet settings --apps"
    )


def test_an_apps_secrets_are_made_once_and_kept(tmp_path):
    from wssfleet_control import inventory as fleet_inventory
    from wssfleet_control.inventory import app_redis_secret, app_secret

    shutil.copytree(EXAMPLES / "echo-node", tmp_path / "echo")
    path = tmp_path / "staging.py"
    app = {
        "source": "echo",
        "command": "node server.js",
        "path": "/echo",
        "port": 8101,
        "redis": True,
        "secrets": ["SESSION_KEY", "SIGNING_KEY"],
    }
    path.write_text(
        "master = [('m', {'ssh_hostname': '127.0.0.10'})]\n"
        "workers = [('w', {'ssh_hostname': '127.0.0.11'})]\n"
        "all = (['m', 'w'], {'wssfleet_inventory': __file__, 'wssfleet': {"
        "'domain': 'ws.example.com', 'acme_server': 'https://127.0.0.1:14000/dir', "
        f"'apps': {{'echo': {app!r}}}}}}})\n"
    )
    fleet = fleet_inventory.load(path)
    made = fleet.secrets()
    names = [app_redis_secret("echo"), app_secret("echo", "SESSION_KEY")]
    names.append(app_secret("echo", "SIGNING_KEY"))
    assert names == [
        "app_echo_redis_password",
        "app_echo_secret_session_key",
        "app_echo_secret_signing_key",
    ]
    assert all(len(made[name]) >= 32 for name in names)
    assert len({made[name] for name in names}) == 3
    assert {name: fleet.secrets()[name] for name in names} == {name: made[name] for name in names}
    assert "env sets too" in refusal(chat={**CHAT, "secrets": ["KEY"], "env": {"KEY": "x"}})
    assert "the fleet sets" in refusal(chat={**CHAT, "secrets": ["REDIS_URL"]})
