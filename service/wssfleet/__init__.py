"""wssfleet: a secure, horizontally scaled WebSocket service and its one-command deploy."""

__version__ = "0.1.0"
