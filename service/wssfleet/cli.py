"""``wssfleet-service serve``: one service process, configured by WSSFLEET_* variables."""

from __future__ import annotations

import argparse
import logging
import sys


def _serve(args: argparse.Namespace) -> int:
    import uvloop

    from wssfleet import config as service_config
    from wssfleet import events, node

    try:
        config = service_config.load()
    except service_config.ConfigError as error:
        print(f"wssfleet: configuration error: {error}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(events.JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    events.to_output(sys.stdout.fileno())
    # picows logs each connection and each client's protocol error at INFO or ERROR, which
    # our events and the client's close code already say: a hostile client must not fill the
    # journal. An exception (a bug of ours) still shows.
    picows_log = node.PICOWS_LOG.logger
    picows_log.setLevel(logging.WARNING)
    picows_log.addFilter(lambda record: record.exc_info is not None)
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
