"""sttd's own framing of audio appends reads back, with websockets' parser, as the message it carries."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from sttd.wsframe import _Keys, text_frame


def _parse(data: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=True)  # a server reads what a client masked
    with pytest.raises(StopIteration) as done:
        next(parser)
    frame: Frame = done.value.value
    assert not reader.buffer, "the frame is exactly its bytes"
    return frame


@pytest.mark.parametrize("size", [0, 125, 126, 1326, 65535, 65536, 200_000])
def test_a_text_frame_of_every_length_class_reads_back_whole(size: int) -> None:
    payload = bytes((i * 7) % 256 for i in range(size))
    frame = _parse(text_frame(payload, _Keys().next()))
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.TEXT, True, payload)


def test_masking_keys_differ_and_outlast_one_block() -> None:
    keys = _Keys()
    drawn = [keys.next() for _ in range(3000)]  # more than one 4 KiB block
    assert all(len(k) == 4 for k in drawn)
    assert len(set(drawn)) > 2900  # random 32-bit keys: a repeat or two at most, not a cycle
