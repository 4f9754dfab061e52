"""A WebSocket connection that hands each complete message to its reader as it is parsed.

websockets queues every data frame for the handler task, which ``recv`` wakes: a future, a
task switch and a queue per message. The hub answers most frames without waiting for
anything (an echo, an unsubscribe, an error), so here they are answered inside
``data_received`` instead. websockets' protocol layer still does the framing, unmasking,
the size limit (1009), control frames and the close handshake; this class does what its
message assembler did: reassembly of fragmented messages, the bound on fragments, and
UTF-8 (1007).
"""

from __future__ import annotations

from collections.abc import Callable

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import DATA_OPCODES, CloseCode, Frame, Opcode
from websockets.http11 import Request

from wssfleet.auth import Grant

Message = str | bytes

# websockets' own bound on the frames of one message (its WEBSOCKETS_MAX_FRAGMENTS default):
# without one, a client could send a message as a million one-byte frames.
MAX_FRAGMENTS = 4096


class Connection(ServerConnection):
    """``reader`` gets every complete message, a ``str`` for text and ``bytes`` for binary,
    in order; messages that come before it is set wait in ``early``. ``grant``,
    ``first_channel`` and ``since`` are what the checks before the upgrade found."""

    # Slots, not the instance dict: past websockets' own 27 attributes, more keys there end
    # its key sharing with every other connection, and each connection pays 1.3 KiB for it.
    __slots__ = (
        "early",
        "failed",
        "first_channel",
        "fragmented",
        "fragments",
        "grant",
        "reader",
        "since",
    )

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.reader: Callable[[Message], None] | None = None
        self.early: list[Message] | None = []
        # A fragmented message so far, and whether it is text or binary.
        self.fragments: list[bytes] | None = None
        self.fragmented: Opcode | None = None
        self.failed = False
        self.grant: Grant | None = None
        self.first_channel = ""
        self.since: str | None = None

    def process_event(self, event: Request | Frame) -> None:  # type: ignore[override]
        if self.request is None or event.opcode not in DATA_OPCODES:  # type: ignore[union-attr]
            super().process_event(event)
            return
        assert isinstance(event, Frame)
        if self.failed:
            return  # the parser is discarded, but this batch's frames were parsed already
        if event.opcode is Opcode.CONT or not event.fin:
            message = self._assembled(event)
            if message is None:
                return
        elif event.opcode is Opcode.TEXT:
            message = self._decoded(event.data)
            if message is None:
                return
        else:
            message = bytes(event.data)
        if self.reader is not None:
            self.reader(message)
        elif self.early is not None:
            self.early.append(message)

    def attach(self, reader: Callable[[Message], None]) -> None:
        """From now on, give each message to ``reader``, first those that came before."""
        self.reader = reader
        early, self.early = self.early, None
        for message in early or ():
            self.reader(message)  # not ``reader``: answering one may replace it

    def _assembled(self, frame: Frame) -> Message | None:
        """The whole message once its last fragment is here; None until then."""
        if frame.opcode is not Opcode.CONT:
            self.fragmented, self.fragments = frame.opcode, []
        fragments = self.fragments
        assert fragments is not None  # the protocol layer refuses a CONT that starts nothing
        fragments.append(frame.data)
        if len(fragments) > MAX_FRAGMENTS:
            self._fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
            return None
        if not frame.fin:
            return None
        data, self.fragments = b"".join(fragments), None
        return self._decoded(data) if self.fragmented is Opcode.TEXT else data

    def _decoded(self, data: bytes) -> str | None:
        try:
            return str(data, "utf-8")
        except UnicodeDecodeError as error:
            self._fail(CloseCode.INVALID_DATA, f"{error.reason} at position {error.start}")
            return None

    def _fail(self, code: CloseCode, reason: str) -> None:
        """Close as websockets does for a bad message: the close frame, then hang up."""
        self.failed = True
        self.loop.create_task(self._failing(code, reason))

    async def _failing(self, code: CloseCode, reason: str) -> None:
        try:
            async with self.send_context():
                self.protocol.fail(code, reason)
        except ConnectionClosed:
            pass
