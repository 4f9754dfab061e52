"""A Python WebSocket app on the fleet (the `websockets` library): echoes what a client
sends, answers the health path, and on SIGTERM closes its WebSockets with 1012 so that the
clients reconnect to another instance (docs/apps.md: what the fleet asks of an app)."""

import asyncio
import http
import json
import os
import signal

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

INSTANCE = os.environ.get("WSSFLEET_INSTANCE", "")


def health(connection: ServerConnection, request: Request) -> Response | None:
    if request.path == "/healthz":
        return connection.respond(http.HTTPStatus.OK, "ok\n")
    return None


async def echo(websocket: ServerConnection) -> None:
    await websocket.send(json.dumps({"type": "hello", "instance": INSTANCE}))
    async for message in websocket:
        await websocket.send(message)


async def main() -> None:
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])
    async with serve(echo, host, port, process_request=health, max_size=64 * 1024) as server:
        loop = asyncio.get_running_loop()
        # 1012 "service restart" to every client, then exit.
        loop.add_signal_handler(signal.SIGTERM, server.close, True, 1012, "restarting")
        await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
