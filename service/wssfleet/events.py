"""The service's structured log: one line per event, its fields as JSON (cli.py formats)."""

import logging

log = logging.getLogger("wssfleet")


def event(name: str, **fields: object) -> None:
    """Log one structured line; callers never pass a token."""
    log.info(name, extra={"fields": fields})
