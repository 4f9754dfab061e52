"""A process's HTTP side: its routes (/healthz, the demo page, /internal/shed) and the
checks before a WebSocket upgrade (path, origin, token, since), so that a refused client
never holds a WebSocket."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from http import HTTPStatus
from importlib import resources
from urllib.parse import parse_qs

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from wssfleet import auth, protocol
from wssfleet.config import ServiceConfig as Config
from wssfleet.connection import Connection
from wssfleet.events import event
from wssfleet.hub import Hub

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    # The client contract as an ES module, for applications' pages (docs: README).
    "/wssfleet-client.js": ("wssfleet-client.js", "text/javascript; charset=utf-8"),
}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class AmbiguousRequest(Exception):
    """A request that repeats a header the service decides on: refused with 400."""


def single_header(headers: Headers, name: str) -> str | None:
    """A header the service decides on (Origin, Authorization): one value or none. Two are
    ambiguous, since a proxy and the service could each read another one, and are refused."""
    values = headers.get_all(name)
    if len(values) > 1:
        raise AmbiguousRequest(f"repeated {name} header")
    return values[0] if values else None


def forwarded_for(headers: Headers) -> str | None:
    """The client's address as the nearest proxy (HAProxy) saw it: the last value of the
    last X-Forwarded-For. HAProxy replaces whatever a client sent with one value of its own;
    a chain of proxies appends, and only the last one's word is not the client's."""
    values = headers.get_all("X-Forwarded-For")
    if not values:
        return None
    return values[-1].rpartition(",")[2].strip() or None


class Routes:
    """The HTTP routes and the upgrade's checks of one process, bound to its Config and Hub."""

    def __init__(self, config: Config, hub: Hub) -> None:
        self.config = config
        self.hub = hub
        self.static = {
            path: (resources.files("wssfleet.static").joinpath(name).read_bytes(), kind)
            for path, (name, kind) in STATIC.items()
        }

    def process_request(self, connection: Connection, request: Request) -> Response | None:
        # Routed on the exact path as sent: urlsplit would read '//x/healthz' as a host
        # and the path '/healthz', a route HAProxy never lets clients reach.
        path, _, query = request.path.partition("?")
        if path == "/healthz":
            return self._respond(
                connection,
                HTTPStatus.OK,
                json.dumps(self.hub.health()).encode(),
                "application/json",
            )
        if path == "/internal/shed":
            return self._shed(connection, request, query)
        if path in self.static:
            body, kind = self.static[path]
            return self._respond(connection, HTTPStatus.OK, body, kind, PAGE_HEADERS)
        channel = self._endpoint_channel(path)
        if channel is None:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if channel and not protocol.valid_channel(channel):
            self.hub.stats.handshakes_refused["request"] += 1
            return connection.respond(HTTPStatus.NOT_FOUND, protocol.CHANNEL_RULE + "\n")
        try:
            origin = single_header(request.headers, "Origin")
            credential = self._token(request, query)
        except AmbiguousRequest as error:
            self.hub.stats.handshakes_refused["request"] += 1
            return self._refuse(connection, request, HTTPStatus.BAD_REQUEST, str(error))
        if origin is not None and origin.rstrip("/") not in self.config.allowed_origins:
            self.hub.stats.handshakes_refused["origin"] += 1
            return self._refuse(connection, request, HTTPStatus.FORBIDDEN, "origin not allowed")
        try:
            grant = auth.verify(
                self.config.jwt_secret.get_secret_value(),
                credential,
                previous=self._previous_key(),
                max_ttl=self.config.token_max_ttl,
            )
        except auth.TokenError as error:
            self.hub.stats.handshakes_refused["token"] += 1
            response = self._refuse(connection, request, HTTPStatus.UNAUTHORIZED, str(error))
            response.headers["WWW-Authenticate"] = 'Bearer realm="wssfleet"'
            return response
        since = parse_qs(query, keep_blank_values=True).get("since", [None])[0]
        if since is not None and len(since) > protocol.MAX_OFFSET_CHARACTERS:
            self.hub.stats.handshakes_refused["request"] += 1
            return connection.respond(HTTPStatus.BAD_REQUEST, "since is too long\n")
        connection.grant = grant
        connection.first_channel = channel
        connection.since = since
        return None

    def _previous_key(self) -> str:
        """The signing key before the last rotation, while its overlap lasts: it ends at
        jwt_previous_until whether or not a deploy comes to drop the key."""
        until = self.config.jwt_previous_until
        if until and time.time() >= until:
            return ""
        return self.config.jwt_previous_secret.get_secret_value()

    def _shed(self, connection: ServerConnection, request: Request, query: str) -> Response:
        """GET /internal/shed?count=N&seconds=S, for the master's rebalancer only: it presents
        the deployment's internal key. HAProxy refuses /internal/ to clients besides, and
        whatever it forwards carries X-Forwarded-For; either way the path does not exist."""
        key = self.config.internal_key.get_secret_value()
        try:
            presented = single_header(request.headers, "Authorization") or ""
        except AmbiguousRequest:
            presented = ""
        if (
            not key
            or "X-Forwarded-For" in request.headers
            or not hmac.compare_digest(presented.encode(), f"Bearer {key}".encode())
        ):
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        arguments = parse_qs(query)
        try:
            count = int(arguments["count"][0])
            seconds = float(arguments.get("seconds", ["1"])[0])
            if not (1 <= count <= 1_000_000 and 0.1 <= seconds <= 600):
                raise ValueError
        except (KeyError, ValueError):
            return connection.respond(
                HTTPStatus.BAD_REQUEST, "give count=1..1000000 and seconds=0.1..600\n"
            )
        if self.hub.shedding is not None and not self.hub.shedding.done():
            return connection.respond(HTTPStatus.CONFLICT, "already shedding\n")
        self.hub.shedding = asyncio.get_running_loop().create_task(self.hub.shed(count, seconds))
        body = json.dumps({"shedding": min(count, len(self.hub.clients))}).encode()
        return self._respond(connection, HTTPStatus.ACCEPTED, body, "application/json")

    @staticmethod
    def _endpoint_channel(path: str) -> str | None:
        """'' for /ws, the channel for /ws/<channel>, None for any other path."""
        if path == "/ws":
            return ""
        if path.startswith("/ws/"):
            return path[len("/ws/") :]
        return None

    @staticmethod
    def _token(request: Request, query: str) -> str | None:
        header = single_header(request.headers, "Authorization") or ""
        if header.lower().startswith("bearer "):
            return header[len("bearer ") :].strip()
        values = parse_qs(query).get("token")
        return values[0] if values else None

    @staticmethod
    def _respond(
        connection: ServerConnection,
        status: HTTPStatus,
        body: bytes,
        kind: str,
        extra: dict[str, str] | None = None,
    ) -> Response:
        response = connection.respond(status, "")
        response.body = body
        for name, value in {
            "Content-Type": kind,
            "Content-Length": str(len(body)),
            **(extra or {}),
        }.items():
            if name in response.headers:
                del response.headers[name]
            response.headers[name] = value
        return response

    def _refuse(
        self, connection: ServerConnection, request: Request, status: HTTPStatus, reason: str
    ) -> Response:
        event(
            "reject",
            status=status.value,
            reason=reason,
            path=request.path.partition("?")[0],
            peer=peer(connection, request.headers),
        )
        return connection.respond(status, reason + "\n")


def peer(connection: ServerConnection, headers: Headers | None = None) -> str:
    headers = headers if headers is not None else getattr(connection.request, "headers", None)
    forwarded = forwarded_for(headers) if headers is not None else None
    address = connection.remote_address
    direct = f"{address[0]}:{address[1]}" if address else "?"
    return f"{forwarded} via {direct}" if forwarded else direct
