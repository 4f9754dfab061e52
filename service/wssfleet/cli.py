"""``wssfleet-service serve``: one service process, configured by WSSFLEET_* variables."""

from __future__ import annotations

import argparse
import json
import logging
import sys


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
    from wssfleet import node

    try:
        config = service_config.load()
    except service_config.ConfigError as error:
        print(f"wssfleet: configuration error: {error}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    # picows logs each connection and each client's protocol error at INFO or ERROR, which
    # our events and the client's close code already say: a hostile client must not fill the
    # journal. An exception (a bug of ours) still shows.
    node.PICOWS_LOG.addFilter(lambda record: record.exc_info is not None)
    uvloop.run(node.serve_until_stopped(config))
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="wssfleet-service", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run one service process (configured by WSSFLEET_*)")
    serve.set_defaults(handler=_serve)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.handler(args)
