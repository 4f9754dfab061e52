"""A process's HTTP side: its routes (/healthz, the demo page, /internal/shed) and the
checks before a WebSocket upgrade (path, origin, token, since), so that a refused client
never holds a WebSocket."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import time
from http import HTTPStatus
from importlib import resources
from urllib.parse import parse_qs

from multidict import CIMultiDict
from picows import WSUpgradeRequest, WSUpgradeResponseWithListener

from wssfleet import auth, protocol
from wssfleet.client import Client, ClientLimits
from wssfleet.config import ServiceConfig as Config
from wssfleet.connection import Handler, Upgrade, http_response
from wssfleet.events import event
from wssfleet.hub import Hub

Headers = CIMultiDict[str]
Answer = Client | WSUpgradeResponseWithListener
# A peer as the loop names it: (host, port) for TCP.
Address = tuple[str, int] | None

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
    values = headers.getall(name, [])
    if len(values) > 1:
        raise AmbiguousRequest(f"repeated {name} header")
    return values[0] if values else None


def forwarded_for(headers: Headers) -> str | None:
    """The client's address as the nearest proxy (HAProxy) saw it: the last value of the
    last X-Forwarded-For. HAProxy replaces whatever a client sent with one value of its own;
    a chain of proxies appends, and only the last one's word is not the client's."""
    values = headers.getall("X-Forwarded-For", [])
    if not values:
        return None
    return values[-1].rpartition(",")[2].strip() or None


class Routes:
    """The HTTP routes and the upgrade's checks of one process, bound to its Config and Hub."""

    def __init__(self, config: Config, hub: Hub) -> None:
        self.config = config
        self.hub = hub
        self.client_limits = ClientLimits.of(config)
        self.static = {
            path: (resources.files("wssfleet.static").joinpath(name).read_bytes(), kind)
            for path, (name, kind) in STATIC.items()
        }

    def route(self, handler: Handler, request: WSUpgradeRequest, address: Address) -> Answer:
        """The answer to one request: an HTTP response, or the client an upgrade makes."""
        # Routed on the exact path as sent: urlsplit would read '//x/healthz' as a host
        # and the path '/healthz', a route HAProxy never lets clients reach.
        path, _, query = request.path.decode("latin-1").partition("?")
        if path == "/healthz":
            body = json.dumps(self.hub.health()).encode()
            return http_response(HTTPStatus.OK, body, "application/json")
        if path == "/internal/shed":
            return self._shed(request, query)
        if path in self.static:
            body, kind = self.static[path]
            return http_response(HTTPStatus.OK, body, kind, PAGE_HEADERS)
        channel = self._endpoint_channel(path)
        if channel is None:
            return http_response(HTTPStatus.NOT_FOUND, b"not found\n")
        if channel and not protocol.valid_channel(channel):
            self.hub.stats.handshakes_refused["request"] += 1
            return http_response(HTTPStatus.NOT_FOUND, protocol.CHANNEL_RULE.encode() + b"\n")
        headers = request.headers
        try:
            origin = single_header(headers, "Origin")
            arguments = parse_qs(query, keep_blank_values=True)
            credential = self._token(headers, arguments)
        except AmbiguousRequest as error:
            self.hub.stats.handshakes_refused["request"] += 1
            return self._refuse(path, headers, address, HTTPStatus.BAD_REQUEST, str(error))
        if origin is not None and origin.rstrip("/") not in self.config.allowed_origins:
            self.hub.stats.handshakes_refused["origin"] += 1
            return self._refuse(path, headers, address, HTTPStatus.FORBIDDEN, "origin not allowed")
        try:
            grant = self.verify(credential)
        except auth.TokenError as error:
            self.hub.stats.handshakes_refused["token"] += 1
            return self._refuse(
                path,
                headers,
                address,
                HTTPStatus.UNAUTHORIZED,
                str(error),
                {"WWW-Authenticate": 'Bearer realm="wssfleet"'},
            )
        since = arguments.get("since", [None])[0]
        if since is not None and len(since) > protocol.MAX_OFFSET_CHARACTERS:
            self.hub.stats.handshakes_refused["request"] += 1
            return http_response(HTTPStatus.BAD_REQUEST, b"since is too long\n")
        upgrade = Upgrade(grant, channel, since, peer(address, headers))
        return Client(handler, upgrade, self.config, self.client_limits, self.hub.stats)

    def verify(self, token: str | None) -> auth.Grant:
        """What a token grants, checked as at a handshake (a refresh is checked the same way),
        or TokenError."""
        config = self.config
        return auth.verify(
            config.jwt_secret.get_secret_value(),
            token,
            previous=self._previous_key(),
            max_ttl=config.token_max_ttl,
            previous_until=config.jwt_previous_until,
            skew=config.token_clock_skew,
            canary=config.canary_key.get_secret_value(),
        )

    def _previous_key(self) -> str:
        """The signing key before the last rotation, while its overlap lasts: it ends at
        jwt_previous_until whether or not a deploy comes to drop the key."""
        until = self.config.jwt_previous_until
        if until and time.time() >= until:
            return ""
        return self.config.jwt_previous_secret.get_secret_value()

    def _shed(self, request: WSUpgradeRequest, query: str) -> WSUpgradeResponseWithListener:
        """GET /internal/shed?count=N&seconds=S[&via=ADDRESS], for the masters only: they
        present the deployment's internal key. With ``via``, only the clients whose connection
        comes from that address (a master whose front door moved away). HAProxy refuses
        /internal/ to clients besides, and whatever it forwards carries X-Forwarded-For;
        either way the path does not exist."""
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
            return http_response(HTTPStatus.NOT_FOUND, b"not found\n")
        arguments = parse_qs(query)
        try:
            count = int(arguments["count"][0])
            seconds = float(arguments.get("seconds", ["1"])[0])
            via = arguments.get("via", [""])[0]
            if not (1 <= count <= 1_000_000 and 0.1 <= seconds <= 600 and len(via) <= 64):
                raise ValueError
            if via:
                via = str(ipaddress.ip_address(via))
        except (KeyError, ValueError):
            return http_response(
                HTTPStatus.BAD_REQUEST,
                b"give count=1..1000000, seconds=0.1..600 and optionally via=an IP address\n",
            )
        if self.hub.shedding is not None and not self.hub.shedding.done():
            return http_response(HTTPStatus.CONFLICT, b"already shedding\n")
        among = self.hub.clients_via(via) if via else None
        self.hub.shedding = asyncio.get_running_loop().create_task(
            self.hub.shed(count, seconds, among)
        )
        shedding = len(self.hub.clients if among is None else among)
        body = json.dumps({"shedding": min(count, shedding)}).encode()
        return http_response(HTTPStatus.ACCEPTED, body, "application/json")

    @staticmethod
    def _endpoint_channel(path: str) -> str | None:
        """'' for /ws, the channel for /ws/<channel>, None for any other path."""
        if path == "/ws":
            return ""
        if path.startswith("/ws/"):
            return path[len("/ws/") :]
        return None

    @staticmethod
    def _token(headers: Headers, arguments: dict[str, list[str]]) -> str | None:
        header = single_header(headers, "Authorization") or ""
        values = arguments.get("token") or []
        bearer = header.lower().startswith("bearer ")
        # One credential, in one place: which of two would count is not the service's guess.
        if len(values) > 1 or (bearer and values):
            raise AmbiguousRequest("one token, in the Authorization header or the query")
        if bearer:
            return header[len("bearer ") :].strip()
        return values[0] if values else None

    @staticmethod
    def _refuse(
        path: str,
        headers: Headers,
        address: Address,
        status: HTTPStatus,
        reason: str,
        extra: dict[str, str] | None = None,
    ) -> WSUpgradeResponseWithListener:
        event(
            "reject",
            status=status.value,
            reason=reason,
            path=path,
            peer=peer(address, headers),
        )
        return http_response(status, reason.encode() + b"\n", headers=extra)


def peer(address: Address, headers: Headers) -> str:
    """The client as logs name it: its forwarded address, and the address it came from."""
    forwarded = forwarded_for(headers)
    direct = f"{address[0]}:{address[1]}" if address else "?"
    return f"{forwarded} via {direct}" if forwarded else direct
