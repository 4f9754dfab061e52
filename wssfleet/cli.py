"""The ``wssfleet`` command: run the service, mint tokens, wait for health."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import urllib.error
import urllib.request


class JsonLines(logging.Formatter):
    """One JSON object a line, for journald and log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"level": record.levelname.lower(), "event": record.getMessage()}
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def _serve(args: argparse.Namespace) -> int:
    import uvloop

    from wssfleet import config as service_config
    from wssfleet import server

    try:
        config = service_config.load()
    except service_config.ConfigError as error:
        print(f"wssfleet: configuration error: {error}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    # The library logs every refused handshake at INFO; ours says it once, with a reason.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    uvloop.run(server.run(config))
    return 0


def _token(args: argparse.Namespace) -> int:
    from wssfleet import auth
    from wssfleet.fleet import secrets

    try:
        secret = secrets.load(args.inventory)["jwt_secret"]
        print(auth.mint(secret, args.sub, args.ttl))
    except (ValueError, OSError) as error:
        print(f"wssfleet token: {error}", file=sys.stderr)
        return 2
    return 0


def _wait_healthy(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    waiting = list(args.port)
    while waiting:
        port = waiting[0]
        try:
            with urllib.request.urlopen(f"http://{args.host}:{port}/healthz", timeout=2) as reply:
                if reply.status == 200:
                    waiting.pop(0)
                    continue
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            print(f"wssfleet: port {port} not healthy after {args.timeout} s", file=sys.stderr)
            return 1
        time.sleep(0.2)
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="wssfleet", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run one service process (configured by WSSFLEET_*)")
    serve.set_defaults(run=_serve)

    token = commands.add_parser("token", help="print a client token signed for a deployment")
    token.add_argument("--inventory", default="inventory/lab.py", help="the deployment's inventory")
    token.add_argument("--sub", required=True, help="who the token is for")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    token.set_defaults(run=_token)

    wait = commands.add_parser("wait-healthy", help="wait until local instances answer /healthz")
    wait.add_argument("--host", default="127.0.0.1")
    wait.add_argument("--port", type=int, action="append", required=True)
    wait.add_argument("--timeout", type=float, default=60.0)
    wait.set_defaults(run=_wait_healthy)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)
