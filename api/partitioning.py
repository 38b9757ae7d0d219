"""Which partition of a topic a keyed record goes to: Kafka's default rule, bit for bit.

A topic has ``P`` partitions, numbered ``0 .. P-1``. A record with a key goes to
:func:`partition_for_key` ``(key, P)``, the rule of the Kafka Java producer's built-in
partitioner (``BuiltInPartitioner.partitionForKey``)::

    partition = (murmur2(key) & 0x7fffffff) % P

with :func:`murmur2` the 32-bit MurmurHash2 of Kafka's ``Utils.murmur2`` (seed
``0x9747b28c``), returning the signed 32-bit value that Java returns. Because the hash and
the rule are Kafka's, a key lands on the same partition number here as it does with a Kafka
producer on a topic with the same partition count: data keyed for Kafka can move to raftlog
(or be mirrored between them) without reshuffling keys. The tests check the hash against the
vectors of Kafka's own unit test (``UtilsTest.testMurmur2``).

The rule depends on ``P``: adding partitions to a topic sends most keys elsewhere (as in
Kafka), so a topic's partition count is fixed when the topic is created.

The module is pure (standard library only): clients route with it without the node's code,
and every layer of the node may import it.
"""

from __future__ import annotations

from typing import Final

#: MurmurHash2's mixing constant and shift (Austin Appleby's reference values, as in Kafka).
_M: Final = 0x5BD1E995
_R: Final = 24
#: The seed Kafka's ``Utils.murmur2`` starts from.
_SEED: Final = 0x9747B28C
_MASK32: Final = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """The 32-bit MurmurHash2 of ``data`` as Kafka computes it, a signed 32-bit int.

    Java does the arithmetic in wrapping 32-bit ``int``s and shifts right without sign
    (``>>>``). Here every step is reduced modulo 2**32 (unsigned), which gives the same bits;
    the last step reinterprets them as two's complement, so the result is in
    ``[-2**31, 2**31)`` exactly like Java's return value. The input is read in 4-byte
    little-endian words, then the 1 to 3 bytes left over, as in the reference algorithm.
    """
    length = len(data)
    h = (_SEED ^ length) & _MASK32
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK32
        k ^= k >> _R
        k = (k * _M) & _MASK32
        h = (h * _M) & _MASK32
        h ^= k
    tail = length - whole
    if tail:
        # Java's switch falls through from case 3 to case 1: XOR in the leftover bytes at
        # their little-endian places, then mix once.
        h ^= int.from_bytes(data[whole:], "little")
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition, in ``[0, partitions)``, of a record with ``key`` on a topic of
    ``partitions`` partitions: ``(murmur2(key) & 0x7fffffff) % partitions``.

    This is the Kafka Java producer's rule for keyed records (``& 0x7fffffff`` is Kafka's
    ``Utils.toPositive``: it clears the sign bit, which is not the same as ``abs``), so a
    key goes to the same partition number as with a Kafka producer.

    A record without a key has no partition by this rule: the caller picks one, for
    example round robin over the partitions (Kafka's producer sticks to one partition per
    batch instead). An empty key is refused rather than hashed, so that "no key" is never
    silently the same as "the key ``b''``" and every keyless record landing on one
    partition.

    Raises :class:`ValueError` if ``partitions < 1`` or ``key`` is empty.
    """
    if partitions < 1:
        raise ValueError(f"a topic has at least 1 partition, not {partitions}")
    if not key:
        raise ValueError(
            "an empty key has no partition: a record without a key is placed by the caller "
            "(round robin, for example)"
        )
    return (murmur2(key) & 0x7FFFFFFF) % partitions
