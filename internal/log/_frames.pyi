"""Types of the native helper built from _frames.c (see that file for why it exists)."""

from collections.abc import Sequence

Buffer = bytes | bytearray | memoryview

#: True when the CPU's CRC-32C instruction is used (x86-64 with SSE 4.2).
HARDWARE: int

def encode(records: Sequence[Buffer], /) -> tuple[bytes, bytes]: ...
def encode_into(
    buffer: bytearray | memoryview, records: Sequence[Buffer], /
) -> tuple[int, bytes | None]: ...
def checks(payloads: Sequence[Buffer], /) -> bytes: ...
