"""Writing one websocket text message straight to the transport, when nothing stands in the way.

``ClientConnection.send`` costs an async context manager, a protocol frame
object, its serialisation and an ``os.urandom`` call per message; for the
fifty audio appends a second of 20 ms frames that was the largest piece of
the event loop's time. :func:`send_text_now` frames the message here (masked,
as a client must, with keys cut from one ``os.urandom`` block) and writes it
in one call, but only when the connection is open, no fragmented message or
extension is in play and the transport is not applying back-pressure;
otherwise it returns False and the caller uses ``await ws.send(...)``,
which waits for the buffer to drain and raises ``ConnectionClosed``.
Synchronous: nothing to cancel.
"""

from __future__ import annotations

import os
import struct

from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover (the C speedups ship with every wheel)
    from websockets.utils import apply_mask

_KEYS_BLOCK = 4096
_FIN_TEXT = 0x81
_MASKED = 0x80


class _Keys:
    """Masking keys from the OS's strong random source, 1024 keys per system call."""

    def __init__(self) -> None:
        self._block = b""
        self._at = 0

    def next(self) -> bytes:
        if self._at >= len(self._block):
            self._block, self._at = os.urandom(_KEYS_BLOCK), 0
        at = self._at
        self._at = at + 4
        return self._block[at : at + 4]


_keys = _Keys()


def text_frame(payload: bytes, key: bytes) -> bytes:
    """One final, masked text frame carrying ``payload`` (UTF-8), as RFC 6455 section 5.2 lays it out."""
    size = len(payload)
    if size < 126:
        header = bytes((_FIN_TEXT, _MASKED | size))
    elif size < 65536:
        header = struct.pack("!BBH", _FIN_TEXT, _MASKED | 126, size)
    else:
        header = struct.pack("!BBQ", _FIN_TEXT, _MASKED | 127, size)
    return header + key + apply_mask(payload, key)


def send_text_now(ws: ClientConnection, payload: bytes) -> bool:
    """Write ``payload`` as one text message now if the connection allows it; False: it was not sent."""
    protocol = ws.protocol
    if (
        protocol.state is not State.OPEN
        or protocol.expect_continuation_frame
        or protocol.extensions
        or ws.send_in_progress is not None
        or ws.paused
    ):
        return False
    transport = ws.transport
    if transport.is_closing() or transport.get_write_buffer_size():
        return False  # behind a slow peer: the regular send waits for the buffer to drain
    transport.write(text_frame(payload, _keys.next()))
    return True
